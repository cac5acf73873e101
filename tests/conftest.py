import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, **kwargs):
    """Run ``python -m rnnnotes ARGS`` from the repository root; returns the completed process."""
    return subprocess.run([sys.executable, "-m", "rnnnotes", *args], cwd=ROOT, capture_output=True, text=True,
                          **kwargs)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """Every notebook executed at ``smoke`` through the real runner, and the book built with ``-W``."""
    book_dir = tmp_path_factory.mktemp("book")
    result = cli("book", "--profile", "smoke", "--book-dir", str(book_dir))
    return book_dir, result
