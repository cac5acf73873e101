"""The results store: one directory per (notebook, parameters, run name), written atomically.

Two environment variables let a caller watch or forbid training inside a notebook's kernel:
``$RNNNOTES_RUN_LOG`` (a file; every training run appends one JSON line on finishing or being reused) and
``$RNNNOTES_STORED_ONLY`` (set: any run not finished in the store raises :class:`MissingRun` instead of training,
and so does an analysis of :func:`cached` that was never computed).
"""
import hashlib
import json
import os
import threading
from pathlib import Path

import torch


def results_root():
    """``$RNNNOTES_RESULTS`` if set, else ``results/`` in the current working directory (read at each call)."""
    return Path(os.environ.get("RNNNOTES_RESULTS") or Path.cwd() / "results")


class MissingRun(RuntimeError):
    """A run that is not finished in the store was needed while ``$RNNNOTES_STORED_ONLY`` forbids training."""


def require_training_allowed(run_dir):
    """Raise :class:`MissingRun` naming ``run_dir`` when ``$RNNNOTES_STORED_ONLY`` is set."""
    if os.environ.get("RNNNOTES_STORED_ONLY"):
        where = f"{run_dir} (params.json there names its config)" if run_dir else "a run with no results directory"
        raise MissingRun(f"stored results only, but this run is not finished in the store: {where}")


def log_run(run_dir, status, message, *, trained):
    """Append ``{run, status, message, trained}`` as one JSON line to ``$RNNNOTES_RUN_LOG``, if set."""
    path = os.environ.get("RNNNOTES_RUN_LOG")
    if path:
        line = json.dumps({"run": str(run_dir), "status": status, "message": message, "trained": trained})
        with open(path, "a") as log:
            log.write(line + "\n")


def read_run_log(path):
    """The entries :func:`log_run` appended to ``path`` (none if it does not exist)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_dir(notebook, params, name="run"):
    """``results/<notebook>/<hash of params>/<name>/``, created with a ``params.json`` beside the results."""
    key = json.dumps(params, sort_keys=True, default=str)
    path = results_root() / notebook / hashlib.sha256(key.encode()).hexdigest()[:12] / name
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "params.json", params)
    return path


def _atomic(path, write):
    """``write(tmp)`` then rename ``tmp`` onto ``path``: readers see the old file or the new one, never a part;
    a write that raises leaves the old file and no temporary behind."""
    tmp = Path(f"{path}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, obj):
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str)))


def read_json(path):
    return json.loads(Path(path).read_text())


def save_torch(path, obj):
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path, device=None):
    return torch.load(path, map_location=device, weights_only=False)


def save_table(path, frame):
    _atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def source_hash():
    """sha256 (12 hex digits) of the package's sources (Python and the compiled loops' C++): part of every training
    run's key, so a changed module never silently reuses a model that an older version trained."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted([*package.glob("*.py"), *package.glob("*.cpp")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def cached(notebook, name, params, compute):
    """``compute()``'s value, stored once under ``results/<notebook>/<hash of params and source>/<name>/`` and read
    from there afterwards: the analyses a notebook runs beside its training runs (spectra, timings, Hessians of
    the trained networks), so a book drawn from stored results recomputes nothing. Under
    ``$RNNNOTES_STORED_ONLY`` a value never computed raises :class:`MissingRun`."""
    folder = run_dir(notebook, {**params, "source": source_hash()}, name)
    path = folder / "value.pt"
    if path.exists():
        return load_torch(path)
    if os.environ.get("RNNNOTES_STORED_ONLY"):
        raise MissingRun(f"stored results only, but this analysis was never computed: {folder}")
    value = compute()
    save_torch(path, value)
    return value
