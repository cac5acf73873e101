"""rnnnotes: recurrent-network models, learning rules and analyses behind the notebooks of the book."""
import os

import torch

__version__ = "0.1.0"


def default_device():
    """``cuda`` when a GPU is available, else ``cpu``; nothing here requires a GPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device="auto"):
    """Turn a notebook's ``device`` parameter (``"auto"``, ``"cpu"``, ``"cuda"``, ...) into a ``torch.device``."""
    return default_device() if device == "auto" else torch.device(device)


def thread_env(jobs):
    """The environment of one of ``jobs`` processes sharing this machine: ``{"OMP_NUM_THREADS": cpu_count // jobs}``
    (at least 1) when ``jobs > 1``, since each would otherwise take every core; ``{}`` for a process alone."""
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // int(jobs)))} if jobs > 1 else {}
