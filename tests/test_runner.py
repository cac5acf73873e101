"""The runner: profiles, parameter validation, failures, sweeps."""
import json
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest

from rnnnotes import profiles, runner, sweep
from conftest import cli


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
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("print('fine')"),
                nbformat.v4.new_code_cell("if x == 2:\n    raise ValueError('x must not be 2')")]
    nbformat.write(nb, tmp_path / "98_failing.ipynb")
    monkeypatch.setattr(profiles, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setenv("RNNNOTES_RESULTS", str(tmp_path / "results"))
    return tmp_path


def test_failing_notebook_keeps_its_executed_copy_and_names_the_cell(failing_notebook):
    output = failing_notebook / "out.ipynb"
    with pytest.raises(runner.NotebookFailed, match=r"notebook 98_failing failed in cell In \[4\] \('if x == 2:'\) with ValueError: x must"):
        runner.run("98_failing", overrides={"x": 2}, output=output)
    executed = nbformat.read(output, as_version=4)
    assert executed.metadata.papermill.exception is True
    assert any(o.get("ename") == "ValueError" for c in executed.cells if c.cell_type == "code" for o in c.outputs)


def test_sweep_runs_every_point_and_survives_a_failure(failing_notebook):
    outcomes = sweep.sweep("98_failing", "smoke", {"x": [1, 2, 3]}, executor=ThreadPoolExecutor(2))
    assert [(p["x"], status) for p, status, _ in outcomes] == [(1, "ok"), (2, "failed"), (3, "ok")]
    assert "2 ran, 1 failed" in sweep.summary(outcomes)
    assert (failing_notebook / "results" / "sweeps" / "98_failing" / "smoke" / "x=3.ipynb").exists()


def test_run_executes_a_notebook_through_the_cli(tmp_path):
    output = tmp_path / "neurons.ipynb"
    result = cli("run", "01_neurons", "-p", "duration_ms=200", "--output", str(output))
    assert result.returncode == 0, result.stderr
    executed = nbformat.read(output, as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "duration_ms = 200" in injected[0].source
    assert not executed.metadata.papermill.exception
