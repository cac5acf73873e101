"""Every notebook runs at `smoke` through the real runner; the book builds with -W and renders offline."""
import os
import shutil
import subprocess

import nbformat
import pytest

from rnnnotes import profiles, runner
from conftest import cli


def test_book_builds(built_book):
    book_dir, result = built_book
    assert result.returncode == 0, result.stderr[-3000:]
    assert (book_dir / "_build" / "html" / "index.html").exists()


@pytest.mark.parametrize("name", profiles.notebook_names())
def test_notebook_executes_at_smoke(built_book, name):
    book_dir, result = built_book
    executed = book_dir / "notebooks" / f"{name}.ipynb"
    assert executed.exists(), result.stderr[-3000:]
    nb = nbformat.read(executed, as_version=4)
    assert not nb.metadata.papermill.exception, f"{name} raised; see {executed}"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_a_book_from_stored_results_trains_nothing(built_book, tmp_path):
    """After the smoke build stored its runs, the book builds again as ``make book PROFILE=paper`` builds it
    (``--stored``): every notebook finds its training runs and analyses in the store, and nothing trains (each
    kernel's run log is checked by the runner; a run missing from the store would fail the build)."""
    assert built_book[1].returncode == 0
    result = cli("book", "--profile", "smoke", "--stored", "--jobs", "2", "--book-dir", str(tmp_path / "book"))
    assert result.returncode == 0, result.stderr[-3000:]


def test_toc_lists_every_notebook():
    toc = (runner.book_source() / "_toc.yml").read_text()
    assert all(f"notebooks/{name}" in toc for name in profiles.notebook_names())


def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("headless Chromium is required in CI (apt-get install -y chromium)")
        pytest.skip("headless Chromium is not installed here (apt-get install -y chromium); CI runs this test")
    return found


def rendered_dom(browser, html, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}",
             "--virtual-time-budget=10000", "--window-size=1280,900"]
    result = subprocess.run([browser, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                            timeout=120)
    return result.stdout


def test_neurons_page_renders_figure_slider_and_math_offline(built_book, tmp_path):
    browser = chromium()
    book_dir, result = built_book
    assert result.returncode == 0, result.stderr[-3000:]
    page = book_dir / "_build" / "html" / "notebooks" / "01_neurons.html"
    dom = rendered_dom(browser, page, tmp_path)
    assert '<img alt="_images/' in dom or 'src="../_images/' in dom, "no figure image in the page"
    assert "widget-hslider" in dom, "the ipywidgets slider did not render"
    assert "widget-readout" in dom
    assert "mjx-container" in dom, "MathJax did not typeset the equations"
