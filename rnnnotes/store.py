"""The results store: one directory per (notebook, parameters, run name), written atomically."""
import hashlib
import json
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def results_root():
    """``$RNNNOTES_RESULTS`` if set, else ``results/`` in the repository."""
    return Path(os.environ.get("RNNNOTES_RESULTS", ROOT / "results"))


def run_dir(notebook, params, name="run"):
    """``results/<notebook>/<hash of params>/<name>/``, created with a ``params.json`` beside the results."""
    key = json.dumps(params, sort_keys=True, default=str)
    path = results_root() / notebook / hashlib.sha256(key.encode()).hexdigest()[:12] / name
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "params.json", params)
    return path


def _atomic(path, write):
    tmp = Path(f"{path}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


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
