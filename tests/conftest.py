import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# The package reads its notebook and book directories from these settings, else from the working directory; with
# them the tests run from any directory. The CLI below runs from the repository root without them, as `make` does.
os.environ.setdefault("RNNNOTES_NOTEBOOKS", str(ROOT / "notebooks"))
os.environ.setdefault("RNNNOTES_BOOK", str(ROOT / "book"))


def cli(*args, env=None, cwd=ROOT, **kwargs):
    """Run ``python -m rnnnotes ARGS`` in ``cwd`` (the repository root) with ``env`` added to the environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("RNNNOTES_NOTEBOOKS", "RNNNOTES_BOOK")}
    return subprocess.run([sys.executable, "-m", "rnnnotes", *args], cwd=cwd, capture_output=True, text=True,
                          env={**base, **(env or {})}, **kwargs)


def autograd_gains(cell, x, state):
    """``dz_k / dv_{k-1}`` of every step of ``cell`` run on ``x`` from ``state``, by autograd through ``cell.step``."""
    gains = []
    for current in cell.input_current(x).detach():
        v = state.v.detach().requires_grad_()
        out, state = cell.step(current, state._replace(v=v))
        gains.append(torch.autograd.grad(out.z.sum(), v)[0])
    return torch.stack(gains)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """Every notebook executed at ``smoke`` through the real runner, and the book built with ``-W``."""
    book_dir = tmp_path_factory.mktemp("book")
    result = cli("book", "--profile", "smoke", "--book-dir", str(book_dir))
    return book_dir, result
