"""The runner: profiles, parameter validation, failures, sweeps, settings."""
import asyncio
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import papermill
import pytest
from jupyter_client import AsyncKernelManager

from rnnnotes import profiles, runner, sweep
from conftest import ROOT, cli


def test_profile_table_matches_the_notebooks():
    names = profiles.notebook_names()
    assert names and set(profiles.PROFILES) == set(names)
    for name in names:
        assert set(profiles.PROFILES[name]) == set(profiles.PROFILE_NAMES)
        for profile in profiles.PROFILE_NAMES:
            values = profiles.resolve(name, profile)
            assert values["profile"] == profile


@pytest.mark.parametrize("name", profiles.notebook_names())
def test_notebooks_are_committed_clean(name):
    nb = json.loads(profiles.notebook_path(name).read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0]


@pytest.mark.parametrize("args, message", [
    (["run", "99_nothing"], "unknown notebook '99_nothing'; valid notebooks: 01_neurons"),
    (["run", "01_neurons", "--profile", "huge"], "unknown profile 'huge'; valid profiles: smoke, book, paper"),
    (["run", "01_neurons", "-p", "n_neurons=3"], "unknown parameter 'n_neurons'; declared parameters:"),
    (["run", "01_neurons", "-p", "duration_ms=long"], "parameter 'duration_ms' must be int"),
    (["run", "01_neurons", "-p", "seed=1.5"], "parameter 'seed' must be int"),
    (["run", "01_neurons", "-p", "seed"], "expected key=value, got 'seed'"),
    (["sweep", "01_neurons", "-g", "n_poisson=10,x"], "parameter 'n_poisson' must be int"),
])
def test_bad_input_exits_with_one_line(args, message):
    result = cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_values_are_coerced_to_the_declared_type():
    values = profiles.resolve("01_neurons", "smoke", {"poisson_rate_hz": "10", "seed": "3", "device": "cpu"})
    assert values["poisson_rate_hz"] == 10.0 and isinstance(values["poisson_rate_hz"], float)
    assert values["seed"] == 3 and values["device"] == "cpu"
    with pytest.raises(profiles.ParameterError, match="'seed' must be int"):
        profiles.resolve("01_neurons", "smoke", {"seed": True})


def test_list_prints_every_notebook_and_parameter():
    result = cli("list")
    assert result.returncode == 0
    for name in profiles.notebook_names():
        assert name in result.stdout
        for key in profiles.declared_parameters(name):
            assert key == "profile" or f"  {key} = " in result.stdout


@pytest.fixture
def failing_notebook(tmp_path, monkeypatch):
    """``98_failing`` alone in ``$RNNNOTES_NOTEBOOKS``; ``$RNNNOTES_RESULTS`` unset, so results go to ``work/results``
    under the working directory ``work/``. Its second cell records where the kernel runs and what it was told."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    record = nbformat.v4.new_code_cell("import os, pathlib\nresults = pathlib.Path(os.environ['RNNNOTES_RESULTS'])\n"
                                       "results.mkdir(parents=True, exist_ok=True)\n"
                                       "(results / f'kernel-{x}.txt').write_text(os.getcwd())")
    nb.cells = [params, record, nbformat.v4.new_code_cell("if x == 2:\n    raise ValueError('x must not be 2')")]
    nbformat.write(nb, tmp_path / "98_failing.ipynb")
    monkeypatch.setenv("RNNNOTES_NOTEBOOKS", str(tmp_path))
    monkeypatch.delenv("RNNNOTES_RESULTS", raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def test_failing_notebook_keeps_its_executed_copy_and_names_the_cell(failing_notebook):
    output = failing_notebook / "out.ipynb"
    environ = dict(os.environ)
    with pytest.raises(runner.NotebookFailed, match=r"notebook 98_failing failed in cell In \[4\] \('if x == 2:'\) with ValueError: x must"):
        runner.run("98_failing", overrides={"x": 2}, output=output)
    executed = nbformat.read(output, as_version=4)
    assert executed.metadata.papermill.exception is True
    assert any(o.get("ename") == "ValueError" for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert dict(os.environ) == environ and Path.cwd() == failing_notebook / "work"
    kernel_cwd = (failing_notebook / "work" / "results" / "kernel-2.txt").read_text()
    assert Path(kernel_cwd).resolve() == failing_notebook.resolve(), "the kernel runs in the notebook's directory"


def test_run_hands_the_results_root_to_the_kernel_not_to_os_environ(failing_notebook, monkeypatch):
    calls = {}
    monkeypatch.setattr(papermill, "execute_notebook", lambda source, output, **kw: calls.update(kw))
    monkeypatch.setattr(runner, "_hide_default_parameters", lambda path: None)
    monkeypatch.setenv("RNNNOTES_RESULTS", "relative/results")
    environ = dict(os.environ)
    runner.run("98_failing", output=failing_notebook / "out.ipynb")
    assert dict(os.environ) == environ and "cwd" not in calls, "neither os.environ nor the process cwd changes"

    async def start_kernel(self, **kw):
        calls["start_kernel"] = kw
    monkeypatch.setattr(AsyncKernelManager, "start_kernel", start_kernel)
    asyncio.run(calls["kernel_manager_class"](kernel_name="python3").start_kernel(extra_arguments=[]))
    started = calls["start_kernel"]
    assert started["env"]["RNNNOTES_RESULTS"] == str(failing_notebook / "work" / "relative" / "results")
    assert started["env"]["PATH"] == os.environ["PATH"] and started["cwd"] == str(failing_notebook)


def test_sweep_runs_every_point_and_survives_a_failure(failing_notebook):
    outcomes = sweep.sweep("98_failing", "smoke", {"x": [1, 2, 3]}, executor=ThreadPoolExecutor(2))
    assert [(p["x"], status) for p, status, _ in outcomes] == [(1, "ok"), (2, "failed"), (3, "ok")]
    assert "2 ran, 1 failed" in sweep.summary(outcomes)
    results = failing_notebook / "work" / "results"
    assert (results / "sweeps" / "98_failing" / "smoke" / "x=3.ipynb").exists()
    assert {p.name for p in results.glob("kernel-*.txt")} == {"kernel-1.txt", "kernel-2.txt", "kernel-3.txt"}


def test_directories_are_settings_with_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNNOTES_NOTEBOOKS", str(tmp_path / "nowhere"))
    with pytest.raises(profiles.ParameterError, match="directory .*nowhere does not exist.*RNNNOTES_NOTEBOOKS"):
        profiles.notebook_names()
    monkeypatch.delenv("RNNNOTES_NOTEBOOKS")
    monkeypatch.delenv("RNNNOTES_BOOK")
    monkeypatch.chdir(tmp_path)
    no_notebooks = re.escape(f"notebook directory {tmp_path / 'notebooks'} does not exist")
    with pytest.raises(profiles.ParameterError, match=no_notebooks):
        profiles.notebook_path("01_neurons")
    no_book = re.escape(f"book directory {tmp_path / 'book'} has no _toc.yml") + ".*RNNNOTES_BOOK"
    with pytest.raises(profiles.ParameterError, match=no_book):
        runner.build_book("smoke")
    (tmp_path / "notebooks").mkdir()
    assert profiles.notebook_dir() == tmp_path / "notebooks" and profiles.notebook_names() == []


def test_the_cli_runs_outside_the_source_tree(tmp_path):
    listed = cli("list", cwd=tmp_path, env={"RNNNOTES_NOTEBOOKS": str(ROOT / "notebooks")})
    assert listed.returncode == 0 and "01_neurons" in listed.stdout, listed.stderr
