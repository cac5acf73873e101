"""Execute notebooks with papermill at a profile, and build the book from the executed copies."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill

from . import profiles, store

ROOT = store.ROOT
BOOK_DIR = ROOT / "book"


class NotebookFailed(RuntimeError):
    """A notebook raised; the executed copy with the traceback is kept at ``output``."""


def run(name, profile="smoke", overrides=None, *, output=None, cell_timeout=None):
    """Execute notebook ``name`` at ``profile`` into ``output`` (default ``results/executed/NAME-PROFILE.ipynb``).

    Parameters are validated before a kernel starts; a failing cell raises ``NotebookFailed`` naming the cell.
    """
    parameters = profiles.resolve(name, profile, overrides)
    source = profiles.notebook_path(name)
    output = Path(output or store.results_root() / "executed" / f"{name}-{profile}.ipynb").resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    os.environ["RNNNOTES_RESULTS"] = str(store.results_root().resolve())  # the kernel inherits it
    try:
        papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name="python3",
                                   progress_bar=False, cwd=str(source.parent), execution_timeout=cell_timeout)
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


def fetch_book_assets(book_dir=BOOK_DIR):
    """Put require.js, the widget manager and MathJax under ``book_dir/_vendor`` (npm, once) for offline HTML."""
    vendor = Path(book_dir) / "_vendor"
    if (vendor / "mathjax" / "tex-mml-chtml.js").exists():
        return vendor
    subprocess.run(["bash", str(ROOT / "book" / "fetch_assets.sh"), str(vendor)], check=True)
    return vendor


def build_book(profile="book", *, book_dir=BOOK_DIR, names=None):
    """Execute every notebook at ``profile`` into ``book_dir/notebooks`` and build the HTML with ``-W``.

    All notebooks run even when one fails; the failures are reported together. Returns ``index.html``.
    """
    book_dir = Path(book_dir).resolve()
    if book_dir != BOOK_DIR:
        shutil.copytree(BOOK_DIR, book_dir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("_build", "notebooks"))
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
