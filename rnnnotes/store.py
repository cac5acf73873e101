"""The results store: one directory per (notebook, parameters, run name), written atomically."""
import hashlib
import json
import os
import threading
from pathlib import Path

import torch


def results_root():
    """``$RNNNOTES_RESULTS`` if set, else ``results/`` in the current working directory (read at each call)."""
    return Path(os.environ.get("RNNNOTES_RESULTS") or Path.cwd() / "results")


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
    """sha256 (12 hex digits) of the package's Python sources: part of every training run's key, so a changed
    module never silently reuses a model that an older version trained."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]
