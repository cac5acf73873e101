"""Execute notebooks with papermill at a profile, and build the book from the executed copies."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
from jupyter_client import AsyncKernelManager

from . import profiles, store


class NotebookFailed(RuntimeError):
    """A notebook raised; the executed copy with the traceback is kept at ``output``."""


def book_source():
    """``$RNNNOTES_BOOK`` if set, else ``book/`` in the current working directory: the book's ``_toc.yml``,
    ``_config.yml`` and ``fetch_assets.sh`` (read at each call)."""
    return Path(os.environ.get("RNNNOTES_BOOK") or Path.cwd() / "book")


def _kernel_manager(env, cwd):
    """A kernel manager class whose kernels start with environment ``env`` in directory ``cwd``.

    papermill hands its extra keywords to nbclient's ``NotebookClient``, which builds its kernel manager from
    ``kernel_manager_class``; ``start_kernel(env=, cwd=)`` reaches the kernel's ``Popen``. The caller's
    ``os.environ`` and working directory stay as they are (papermill's own ``cwd=`` would ``chdir`` the process).
    """
    class KernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            return await super().start_kernel(**{"env": env, "cwd": cwd, **kw})
    return KernelManager


def run(name, profile="smoke", overrides=None, *, output=None, cell_timeout=None):
    """Execute notebook ``name`` at ``profile`` into ``output`` (default ``results/executed/NAME-PROFILE.ipynb``).

    Parameters are validated before a kernel starts; a failing cell raises ``NotebookFailed`` naming the cell.
    The kernel runs in the notebook's directory with ``RNNNOTES_RESULTS`` set to the resolved results root.
    """
    parameters = profiles.resolve(name, profile, overrides)
    source = profiles.notebook_path(name)
    results = store.results_root().resolve()
    output = Path(output or results / "executed" / f"{name}-{profile}.ipynb").resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    kernel = _kernel_manager({**os.environ, "RNNNOTES_RESULTS": str(results)}, str(source.parent))
    try:
        papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name="python3",
                                   progress_bar=False, execution_timeout=cell_timeout, kernel_manager_class=kernel)
    except papermill.PapermillExecutionError as err:
        first_line = err.source.strip().splitlines()[0] if err.source.strip() else ""
        raise NotebookFailed(f"notebook {name} failed in cell In [{err.exec_count}] ({first_line!r}) with "
                             f"{err.ename}: {err.evalue}; executed copy with the traceback: {output}") from None
    _hide_default_parameters(output)
    return output


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


def build_book(profile="book", *, book_dir=None, names=None):
    """Execute every notebook at ``profile`` into ``book_dir/notebooks`` and build the HTML with ``-W``.

    ``book_dir`` defaults to :func:`book_source` (built in place); another directory gets a copy of the sources.
    All notebooks run even when one fails; the failures are reported together. Returns ``index.html``.
    """
    source = book_source().resolve()
    if not (source / "_toc.yml").is_file():
        raise profiles.ParameterError(f"book directory {source} has no _toc.yml; run from the repository root or "
                                      f"set RNNNOTES_BOOK to the directory holding the book's sources")
    book_dir = Path(book_dir).resolve() if book_dir else source
    if book_dir != source:
        shutil.copytree(source, book_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("_build", "notebooks"))
    fetch_book_assets(book_dir)
    failures = []
    for name in names or profiles.notebook_names():
        try:
            run(name, profile, output=book_dir / "notebooks" / f"{name}.ipynb")
        except NotebookFailed as err:
            failures.append(str(err))
    if failures:
        raise NotebookFailed("; ".join(failures))
    subprocess.run(["jupyter-book", "build", "--warningiserror", "--keep-going", str(book_dir)], check=True,
                   env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    return book_dir / "_build" / "html" / "index.html"
