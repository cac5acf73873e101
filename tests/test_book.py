"""Every notebook runs at `smoke` through the real runner; the book builds with -W and renders offline."""
import ast
import os
import re
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


def test_credit_assignment_shows_each_rule_where_its_runs_finished(tmp_path, monkeypatch):
    """Notebook 04 at a learning rate where every run diverges (listed first) and a sane one: each rule is shown at
    the sane one, and every diverged run is listed. A diverged run has no final loss to rank its learning rate by;
    ranked by what such runs logged before they stopped (nothing, here: a NaN mean), the diverging rate was shown."""
    monkeypatch.setenv("RNNNOTES_RESULTS", str(tmp_path / "results"))
    output = tmp_path / "04.ipynb"
    runner.run("04_credit_assignment", "smoke", {"lrs": [1000.0, 5e-4]}, output=output)
    printed = "".join(o.get("text", "") for c in nbformat.read(output, as_version=4).cells
                      if c.cell_type == "code" for o in c.outputs)
    parameters = profiles.resolve("04_credit_assignment", "smoke")
    rules = parameters["rules"]
    shown = re.search(r"learning rate shown per rule [^:]*: (\{.*\})", printed)
    assert shown and ast.literal_eval(shown.group(1)) == dict.fromkeys(rules, 5e-4), printed[-2000:]
    diverged = parameters["n_seeds"] * len(rules)
    assert printed.count(", 1000.0, ") == diverged, "each diverged run is listed with its key"


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
