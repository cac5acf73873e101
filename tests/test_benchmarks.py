"""The benchmark report's writer (a well-formed Markdown table, a marked section replaced in place), and every
comparison of ``python -m benchmarks`` runs at its quick sizes."""
import importlib
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root holds `benchmarks/`
from benchmarks import report  # noqa: E402
from benchmarks.__main__ import COMPARISONS  # noqa: E402  (puts benchmarks/ on the path, as the scripts expect)

PEERS = {"spiking": ("norse", "snntorch"), "hessian": ("pyhessian",)}  # installed by `make bench` or CI

ROWS = [
    dict(comparison="LIF fwd+bwd vs norse LIF", setting="80x220x64x400", device="cpu", ours_s=0.1,
         reference_s=0.25, ratio=2.5, note="rates 30 / 31 Hz"),
    dict(comparison="LIF fast vs plain path", setting="a|b", device="cuda (GPU)", ours_s=None, reference_s=None,
         ratio=None, note="skipped"),
]


def test_markdown_table_is_well_formed():
    lines = report.markdown_table(ROWS).splitlines()
    assert len(lines) == 2 + len(ROWS)
    columns = len(report.FIELDS)
    for line in lines:
        assert line.startswith("|") and line.endswith("|")
        assert len(line.replace("\\|", "").split("|")) == columns + 2  # the pipe inside "a|b" is escaped
    assert lines[1] == "|" + "---|" * columns
    assert "| 0.1 | 0.25 | 2.5 |" in lines[2]
    assert "| – | – | – |" in lines[3]


def test_section_is_replaced_idempotently(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\nbefore\n\n{report.START}\nold table\n{report.END}\n\nafter\n")
    paths = report.write(ROWS, page, "machine line")
    first = page.read_text()
    assert first.startswith("# Title\n\nbefore\n\n") and first.endswith(f"{report.END}\n\nafter\n")
    assert "old table" not in first and "machine line" in first and first.count(report.START) == 1
    assert "![speed-up (reference time / rnnnotes time)](images/page.png)" in first
    assert "<images/page.csv>" in first
    report.write(ROWS, page, "machine line")
    assert page.read_text() == first
    assert [p.name for p in paths] == ["page.md", "page.png", "page.csv"] and all(p.exists() for p in paths)
    assert (tmp_path / "images" / "page.csv").read_text().splitlines()[0] == ",".join(report.FIELDS)


def test_missing_markers_are_appended_once():
    once = report.replace_section("# Benchmarks\n", "table")
    assert once == f"# Benchmarks\n\n{report.START}\ntable\n{report.END}\n"
    assert report.replace_section(once, "table") == once


@pytest.mark.parametrize("name", sorted(COMPARISONS))
def test_every_comparison_runs_at_its_quick_sizes(name):
    """A comparison that no longer matches the module it times (a renamed argument, a moved name) fails here
    rather than in the next `make bench`."""
    for peer in PEERS.get(name, ()):
        pytest.importorskip(peer)
    rows = importlib.import_module(COMPARISONS[name][0]).run(quick=True)
    assert rows and all(tuple(r) == report.FIELDS for r in rows)
    timed = [r for r in rows if r["ours_s"] is not None]
    assert timed, "no comparison was timed"
    for r in timed:
        assert r["ours_s"] > 0 and r["reference_s"] > 0
        assert math.isclose(r["ratio"], r["reference_s"] / r["ours_s"])


def test_paper_dry_run_shrinks_only_declared_parameters_of_every_notebook():
    """A misspelt or renamed count in the dry run's table would stop it on the GPU machine; here it fails at once."""
    from benchmarks import paper_dry_run
    from rnnnotes.profiles import PROFILES, declared_parameters
    assert sorted(paper_dry_run.SHRINK) == sorted(PROFILES)
    for name, counts in paper_dry_run.SHRINK.items():
        declared = declared_parameters(name)
        assert set(counts) <= set(declared), name
        assert all(isinstance(v, type(declared[k])) for k, v in counts.items()), name
