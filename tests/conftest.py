import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """Every notebook executed at ``smoke`` through the real runner, and the book built with ``-W``."""
    book_dir = tmp_path_factory.mktemp("book")
    result = cli("book", "--profile", "smoke", "--book-dir", str(book_dir))
    return book_dir, result
