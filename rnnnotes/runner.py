"""Execute notebooks with papermill at a profile, and build the book from the executed copies."""
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import papermill
from jupyter_client import AsyncKernelManager
from traitlets import default

from . import profiles, store, thread_env


class NotebookFailed(RuntimeError):
    """A notebook raised; the executed copy with the traceback is kept at ``output``. ``ename`` is the name of
    the exception the notebook raised, ``evalue`` its message."""

    def __init__(self, message, ename="", evalue=""):
        super().__init__(message)
        self.ename, self.evalue = ename, evalue


def book_source():
    """``$RNNNOTES_BOOK`` if set, else ``book/`` in the current working directory: the book's ``_toc.yml``,
    ``_config.yml`` and ``fetch_assets.sh`` (read at each call)."""
    return Path(os.environ.get("RNNNOTES_BOOK") or Path.cwd() / "book")


def _kernel_manager(env, cwd, sockets):
    """A kernel manager class whose kernels start with environment ``env`` in directory ``cwd``.

    papermill hands its extra keywords to nbclient's ``NotebookClient``, which builds its kernel manager from
    ``kernel_manager_class``; ``start_kernel(env=, cwd=)`` reaches the kernel's ``Popen``. The caller's
    ``os.environ`` and working directory stay as they are (papermill's own ``cwd=`` would ``chdir`` the process).

    On POSIX the kernel listens on Unix sockets in the directory ``sockets``, not on TCP ports: jupyter_client picks
    free TCP ports by binding and releasing them before the kernel binds them again, and a kernel started in another
    process meanwhile may take one ("Address already in use": the kernel dies at its start).
    """
    class KernelManager(AsyncKernelManager):
        @default("transport")
        def _unix_sockets(self):
            return "ipc" if os.name == "posix" else "tcp"

        @default("ip")
        def _socket_prefix(self):
            return os.path.join(sockets, "kernel") if self.transport == "ipc" else super()._ip_default()

        async def start_kernel(self, **kw):
            return await super().start_kernel(**{"env": env, "cwd": cwd, **kw})
    return KernelManager


def run(name, profile="smoke", overrides=None, *, output=None, cell_timeout=None, env=None):
    """Execute notebook ``name`` at ``profile`` into ``output`` (default ``results/executed/NAME-PROFILE.ipynb``).

    Parameters and ``output`` are validated before a kernel starts; a failing cell raises ``NotebookFailed`` naming
    the cell. The kernel runs in the notebook's directory with ``RNNNOTES_RESULTS`` set to the resolved results root
    and the variables of ``env`` added (e.g. ``RNNNOTES_RUN_LOG``, ``RNNNOTES_STORED_ONLY``: see :mod:`rnnnotes.store`).
    """
    parameters = profiles.resolve(name, profile, overrides)
    source = profiles.notebook_path(name)
    results = store.results_root().resolve()
    output = Path(output or results / "executed" / f"{name}-{profile}.ipynb").resolve()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise profiles.ParameterError(f"output {output} cannot be written: {err}") from None
    if output.is_dir() or not os.access(output.parent, os.W_OK):
        raise profiles.ParameterError(f"output {output} cannot be written: a directory, or in a read-only one")
    environment = {**os.environ, "RNNNOTES_RESULTS": str(results), **(env or {})}
    try:
        with tempfile.TemporaryDirectory(prefix="rnnnotes-kernel-") as sockets:
            kernel = _kernel_manager(environment, str(source.parent), sockets)
            papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name="python3",
                                       progress_bar=False, execution_timeout=cell_timeout, kernel_manager_class=kernel)
    except papermill.PapermillExecutionError as err:
        first_line = err.source.strip().splitlines()[0] if err.source.strip() else ""
        raise NotebookFailed(f"notebook {name} failed in cell In [{err.exec_count}] ({first_line!r}) with "
                             f"{err.ename}: {err.evalue}; executed copy with the traceback: {output}",
                             err.ename, err.evalue) from None
    _hide_default_parameters(output)
    return output


def _die_with_parent():
    """In a child process (Linux): receive SIGTERM when the parent ends, so no execution outlives its sweep."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass


def _failure(name, output, returncode, stderr):
    """The ``NotebookFailed`` of a child execution: the error the executed copy records, else how it ended."""
    try:
        nb = nbformat.read(output, as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    except (OSError, ValueError):
        errors = []
    if errors:
        ename, evalue = errors[-1].ename, errors[-1].evalue
        return NotebookFailed(f"notebook {name} failed with {ename}: {evalue}; executed copy with the traceback: "
                              f"{output}", ename, evalue)
    how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
    last = (stderr.strip().splitlines() or [""])[-1]
    return NotebookFailed(f"notebook {name}: its execution {how}" + (f" ({last})" if last else ""))


_CELL_TIMEOUTS = {"smoke": ("RNNNOTES_SMOKE_CELL_TIMEOUT", 300), "book": ("RNNNOTES_BOOK_CELL_TIMEOUT", 1800)}


def cell_timeout(profile, overrides=None):
    """Seconds a cell may run in an isolated execution at ``profile``: ``smoke`` ``$RNNNOTES_SMOKE_CELL_TIMEOUT``
    (default 300; its cells take seconds); ``book`` at its own settings ``$RNNNOTES_BOOK_CELL_TIMEOUT`` (default
    1800; its longest cells train for about 9 minutes on 2 cores); ``book`` with ``overrides`` (a sweep's point may
    train far longer) and ``paper`` (a cell may train for hours): no limit. A cell past its limit is a hung kernel
    connection (a reply that never arrives, a known rare failure of jupyter_client and papermill, seen at both
    profiles: the kernel idle, the cell waiting), not work."""
    if profile not in _CELL_TIMEOUTS or (profile == "book" and overrides):
        return None
    variable, default = _CELL_TIMEOUTS[profile]
    return float(os.environ.get(variable, default))


def run_isolated(name, profile="smoke", overrides=None, *, output, env=None):
    """:func:`run` in a child process ``python -m rnnnotes run`` with its own kernel: killing it fails this
    execution alone, and it ends when this process ends. Raises ``NotebookFailed`` as :func:`run` does. A cell may
    run :func:`cell_timeout` seconds, and an execution that times out is run once more (finished runs come from the
    store, interrupted ones resume from their checkpoints)."""
    values = profiles.resolve(name, profile, overrides)  # refused here, before a process starts
    declared = profiles.declared_parameters(name)
    args = [sys.executable, "-m", "rnnnotes", "run", name, "--profile", profile, "--output", str(output)]
    for key in overrides or {}:
        args += ["-p", f"{key}={values[key] if isinstance(declared[key], str) else repr(values[key])}"]
    attempts, timeout = 1, cell_timeout(profile, overrides)
    if timeout is not None:
        args, attempts = args + ["--cell-timeout", str(timeout)], 2
    child_env = {**os.environ, "RNNNOTES_RESULTS": str(store.results_root().resolve()),
                 "RNNNOTES_NOTEBOOKS": str(profiles.notebook_dir().resolve()), **(env or {})}
    for _ in range(attempts):
        done = subprocess.run(args, env=child_env, capture_output=True, text=True, preexec_fn=_die_with_parent)
        if not done.returncode:
            return Path(output)
        if "CellTimeoutError" not in done.stderr:
            break
    raise _failure(name, output, done.returncode, done.stderr)


def run_logged(name, profile="smoke", overrides=None, *, output, env=None):
    """:func:`run_isolated` with ``$RNNNOTES_RUN_LOG`` set; returns the entries its training runs logged, one per
    run finished or reused (:func:`rnnnotes.store.log_run`)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "runs.jsonl"
        run_isolated(name, profile, overrides, output=output, env={**(env or {}), "RNNNOTES_RUN_LOG": str(log)})
        return store.read_run_log(log)


def _hide_default_parameters(path):
    """In the executed copy, hide the notebook's default ``parameters`` cell; the injected values stay visible."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, path)


def fetch_book_assets(book_dir):
    """Put require.js, the widget manager and MathJax under ``book_dir/_vendor`` for offline HTML (once, with
    ``book_dir/fetch_assets.sh`` and npm)."""
    vendor = Path(book_dir) / "_vendor"
    if (vendor / "mathjax" / "tex-mml-chtml.js").exists():
        return vendor
    subprocess.run(["bash", str(Path(book_dir) / "fetch_assets.sh"), str(vendor)], check=True)
    return vendor


def _execute_for_book(name, profile, output, stored, env):
    """Execute one notebook of the book, its kernel's environment updated with ``env``; with ``stored``, training
    is forbidden in its kernel (a missing run raises ``MissingRun`` there) and its run log is checked: every run
    must have been read from the store."""
    if not stored:
        return run_isolated(name, profile, output=output, env=env)
    entries = run_logged(name, profile, output=output, env={**env, "RNNNOTES_STORED_ONLY": "1"})
    trained = [entry["run"] for entry in entries if entry["trained"]]
    if trained:
        raise NotebookFailed(f"notebook {name} trained during a stored-results build: {', '.join(trained)}")
    return output


def _check_jobs(jobs):
    if int(jobs) != jobs or jobs < 1:
        raise profiles.ParameterError(f"jobs must be a positive integer, got {jobs!r}")


def execute_all(names, profile, folder, *, stored=False, jobs=1):
    """Execute ``names`` at ``profile`` into ``folder/NAME.ipynb``, ``jobs`` at a time, each in its own process
    (:func:`run_isolated`, with :func:`rnnnotes.thread_env`'s threads), the longest first
    (:data:`rnnnotes.profiles.BOOK_MINUTES`), which shortens the whole; all run even when one fails, and the
    failures are reported together, the runs missing from the store (``stored=True``) listed apart. Returns the
    executed paths, in the order of ``names``."""
    _check_jobs(jobs)
    env = thread_env(jobs)
    longest_first = sorted(names, key=lambda name: -profiles.BOOK_MINUTES.get(name, 0.0))
    with ThreadPoolExecutor(max_workers=int(jobs)) as pool:
        futures = {name: pool.submit(_execute_for_book, name, profile, Path(folder) / f"{name}.ipynb", stored,
                                     env) for name in longest_first}
        failures, missing = [], []
        for name, future in futures.items():
            try:
                future.result()
            except NotebookFailed as err:
                (missing if err.ename == "MissingRun" else failures).append(f"{name}: {err.evalue or err}")
    if missing:
        failures.insert(0, "runs missing from the store (run `make paper`, or unpack an archive of them with "
                           "`python -m rnnnotes results unpack`):\n  " + "\n  ".join(missing))
    if failures:
        raise NotebookFailed("\n".join(failures))
    return [Path(folder) / f"{name}.ipynb" for name in names]


def build_book(profile="book", *, book_dir=None, names=None, stored=False, jobs=1):
    """Execute every notebook at ``profile`` into ``book_dir/notebooks`` (:func:`execute_all`) and build the
    HTML with ``-W``. ``book_dir`` defaults to :func:`book_source` (built in place); another directory gets a copy
    of the sources. ``stored=True`` draws every run from the results store and trains nothing. The profile,
    notebooks and ``jobs`` are checked before anything is copied or fetched. Returns ``index.html``."""
    source = book_source().resolve()
    if not (source / "_toc.yml").is_file():
        raise profiles.ParameterError(f"book directory {source} has no _toc.yml; run from the repository root or "
                                      f"set RNNNOTES_BOOK to the directory holding the book's sources")
    _check_jobs(jobs)
    names = names or profiles.notebook_names()
    for name in names:
        profiles.resolve(name, profile)
    book_dir = Path(book_dir).resolve() if book_dir else source
    if book_dir != source:
        shutil.copytree(source, book_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("_build", "notebooks"))
    fetch_book_assets(book_dir)
    execute_all(names, profile, book_dir / "notebooks", stored=stored, jobs=jobs)
    subprocess.run(["jupyter-book", "build", "--warningiserror", "--keep-going", str(book_dir)], check=True,
                   env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    return book_dir / "_build" / "html" / "index.html"
