"""rnnnotes: recurrent-network models, learning rules and analyses behind the notebooks of the book."""
import torch

__version__ = "0.1.0"


def default_device():
    """``cuda`` when a GPU is available, else ``cpu``; nothing here requires a GPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device="auto"):
    """Turn a notebook's ``device`` parameter (``"auto"``, ``"cpu"``, ``"cuda"``, ...) into a ``torch.device``."""
    return default_device() if device == "auto" else torch.device(device)
