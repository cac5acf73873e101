"""The runner: profiles, parameter validation, failures, sweeps, settings."""
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import papermill
import pytest
from jupyter_client import AsyncKernelManager

import rnnnotes
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
    (["run", "01_neurons", "-p", "duration_ms={[1]: 2}"], "parameter 'duration_ms' must be int"),
    (["run", "01_neurons", "-p", "duration_ms=" + "-" * 100000 + "1"], "parameter 'duration_ms' must be int"),
    (["run", "01_neurons", "-p", "profile=paper"], "set the profile with --profile, not -p"),
    (["run", "01_neurons", "--output", "/dev/null/x.ipynb"], "output /dev/null/x.ipynb cannot be written"),
    (["sweep", "01_neurons", "-g", "n_poisson=10,x"], "parameter 'n_poisson' must be int"),
    (["sweep", "01_neurons", "-g", "profile=paper,book"], "set the profile with --profile, not -p or -g"),
    (["sweep", "01_neurons", "--executor", "cloud"], "unknown executor 'cloud'; valid executors: local, slurm"),
    (["sweep", "01_neurons", "--seeds", "0,1,0"], "seeds must be distinct non-negative integers, got '0,1,0'"),
    (["sweep", "01_neurons", "--seeds", "-1"], "seeds must be distinct non-negative integers"),
    (["sweep", "01_neurons", "--jobs", "0"], "jobs must be a positive integer"),
    (["sweep", "01_neurons", "--partition", "gpu"], "partition, time, gpus and mem are options of --executor slurm"),
])
def test_bad_input_exits_with_one_line(args, message):
    result = cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and len(lines[0]) < 1000, result.stderr[:2000]


@pytest.mark.parametrize("option, message", [(["--profile", "bogus"], "unknown profile 'bogus'"),
                                             (["--jobs", "0"], "jobs must be a positive integer")])
def test_a_book_refuses_bad_options_before_copying_or_fetching(tmp_path, option, message):
    """Sources without ``_vendor``: a bad option ends before the copy to ``--book-dir`` and the assets' download."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    (source / "fetch_assets.sh").write_text("echo fetched >&2\nexit 1\n")
    result = cli("book", *option, "--book-dir", str(tmp_path / "copy"), env={"RNNNOTES_BOOK": str(source)})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "copy").exists()


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
    under the working directory ``work/``. Its second cell records where the kernel runs, what it was told and how
    it listens."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    record = nbformat.v4.new_code_cell(
        "import ipykernel, json, os, pathlib\n"
        "results = pathlib.Path(os.environ['RNNNOTES_RESULTS'])\n"
        "results.mkdir(parents=True, exist_ok=True)\n"
        "(results / f'kernel-{x}.txt').write_text(os.getcwd())\n"
        "(results / f'threads-{x}.txt').write_text(os.environ.get('OMP_NUM_THREADS', ''))\n"
        "info = json.loads(ipykernel.get_connection_info())\n"
        "shell = f\"{info['ip']}-{info['shell_port']}\"\n"
        "(results / f'sockets-{x}.txt').write_text(f\"{info['transport']} {shell}\")")
    nb.cells = [params, record, nbformat.v4.new_code_cell(
        "if x == 2:\n    raise ValueError('x must not be 2')\n"
        "if x == 5:  # a long cell, for a signal to interrupt\n    import time\n    time.sleep(300)")]
    nbformat.write(nb, tmp_path / "98_failing.ipynb")
    monkeypatch.setenv("RNNNOTES_NOTEBOOKS", str(tmp_path))
    monkeypatch.delenv("RNNNOTES_RESULTS", raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def test_failing_notebook_keeps_its_executed_copy_and_names_the_cell(failing_notebook):
    output = failing_notebook / "out.ipynb"
    environ = dict(os.environ)
    message = r"notebook 98_failing failed in cell In \[4\] \('if x == 2:'\) with ValueError: x must"
    with pytest.raises(runner.NotebookFailed, match=message):
        runner.run("98_failing", overrides={"x": 2}, output=output)
    executed = nbformat.read(output, as_version=4)
    assert executed.metadata.papermill.exception is True
    assert any(o.get("ename") == "ValueError" for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert dict(os.environ) == environ and Path.cwd() == failing_notebook / "work"
    kernel_cwd = (failing_notebook / "work" / "results" / "kernel-2.txt").read_text()
    assert Path(kernel_cwd).resolve() == failing_notebook.resolve(), "the kernel runs in the notebook's directory"
    transport, shell = (failing_notebook / "work" / "results" / "sockets-2.txt").read_text().split()
    assert transport == "ipc" and Path(shell).is_absolute() and not Path(shell).parent.exists(), \
        "the kernel listened on Unix sockets (no TCP port another kernel's start could take), removed at its end"


def test_sigterm_ends_an_execution_and_removes_its_kernel_sockets(failing_notebook):
    """A sweep that ends sends SIGTERM to its executions (``runner._die_with_parent``). The execution exits at once
    through its clean-up: the kernel's socket directory goes, which SIGTERM's default action leaves behind."""
    proc = subprocess.Popen([sys.executable, "-m", "rnnnotes", "run", "98_failing", "-p", "x=5"],
                            cwd=failing_notebook / "work", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record = failing_notebook / "work" / "results" / "sockets-5.txt"
    deadline = time.monotonic() + 120
    while not record.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert record.exists(), proc.communicate(timeout=30)
    sockets = Path(record.read_text().split()[1]).parent
    assert sockets.is_dir()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not sockets.exists(), "the kernel's socket directory was left behind"


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
    assert [(p["x"], status) for p, status, _ in outcomes] == [(1, "done"), (2, "failed"), (3, "done")]
    assert "2 done, 0 reused, 0 resumed, 1 failed" in sweep.summary(outcomes)
    results = failing_notebook / "work" / "results"
    assert (results / "sweeps" / "98_failing" / "smoke" / "x=3.ipynb").exists()
    assert {p.name for p in results.glob("kernel-*.txt")} == {"kernel-1.txt", "kernel-2.txt", "kernel-3.txt"}


def test_a_second_sweep_reuses_finished_points_and_resumes_the_others(failing_notebook):
    """Finished points are not executed again (their kernel's record keeps its time); a point whose execution
    failed or was interrupted is executed again and reported as resumed."""
    executor = ThreadPoolExecutor(2)
    sweep.sweep("98_failing", "smoke", {"x": [1, 2]}, executor=executor)
    results = failing_notebook / "work" / "results"
    first = (results / "kernel-1.txt").stat().st_mtime_ns
    interrupted = results / "sweeps" / "98_failing" / "smoke" / "x=3.ipynb"
    interrupted.write_text("{}")  # an execution killed before it finished leaves its notebook, not its marker
    again = sweep.sweep("98_failing", "smoke", {"x": [1, 2, 3]}, executor=ThreadPoolExecutor(2))
    assert [(p["x"], status) for p, status, _ in again] == [(1, "reused"), (2, "failed"), (3, "resumed")]
    assert (results / "kernel-1.txt").stat().st_mtime_ns == first
    assert (results / "kernel-3.txt").exists()


def test_sweep_through_submitit_matches_the_process_pool(failing_notebook, monkeypatch):
    """``executor("slurm")`` without SLURM is submitit's local executor (subprocesses): the same outcomes as the
    local pool in a fresh results directory, and a summary CSV naming the failure's cause."""
    pool = sweep.sweep("98_failing", "smoke", {"x": [1, 2, 3]}, executor=sweep.executor("local", jobs=2))
    monkeypatch.setenv("RNNNOTES_RESULTS", str(failing_notebook / "submitted"))
    submitted = sweep.sweep("98_failing", "smoke", {"x": [1, 2, 3]},
                            executor=sweep.executor("slurm", jobs=3, folder=failing_notebook / "submitit"))
    assert [(p, s) for p, s, _ in submitted] == [(p, s) for p, s, _ in pool] == [
        ({"x": 1}, "done"), ({"x": 2}, "failed"), ({"x": 3}, "done")]
    assert {p.name for p in (failing_notebook / "submitted").glob("kernel-*.txt")} == {
        "kernel-1.txt", "kernel-2.txt", "kernel-3.txt"}
    rows = (failing_notebook / "submitted" / "sweeps" / "98_failing" / "smoke" / "summary.csv").read_text()
    assert rows.splitlines()[0] == "x,status,detail"
    assert rows.splitlines()[2].startswith("2,failed,") and "x must not be 2" in rows.splitlines()[2]


def test_parallel_points_and_book_notebooks_share_the_cores(failing_notebook, monkeypatch):
    """Two points (or book notebooks) at once on 8 cores: each kernel is told 4 threads; one alone, nothing."""
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert rnnnotes.thread_env(1) == {} and rnnnotes.thread_env(16) == {"OMP_NUM_THREADS": "1"}
    results = failing_notebook / "work" / "results"
    sweep.sweep("98_failing", "smoke", {"x": [1, 3]}, executor=sweep.executor("local", jobs=2))
    assert [(results / f"threads-{x}.txt").read_text() for x in (1, 3)] == ["4", "4"]
    sweep.sweep("98_failing", "smoke", {"x": [4]}, executor=sweep.executor("local", jobs=1))
    assert (results / "threads-4.txt").read_text() == ""
    (results / "threads-1.txt").unlink()
    runner.execute_all(["98_failing"], "smoke", failing_notebook / "book", jobs=2)
    assert (results / "threads-1.txt").read_text() == "4"


def test_slurm_without_submitit_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    with pytest.raises(profiles.ParameterError, match="executor 'slurm' needs submitit"):
        sweep.executor("slurm")


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


def test_the_pages_workflow_builds_as_make_book_does():
    """The published book is built by the same command as ``make book``, after the same setup."""
    import yaml
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nbook: setup\n", 1)[1].splitlines()[0].strip()
    assert recipe == ("$(PY) -m rnnnotes book --profile $(PROFILE) --jobs $(JOBS) "
                      "$(if $(filter paper,$(PROFILE)),--stored)")
    assert "\nPROFILE := book\n" in makefile
    steps = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())["jobs"]["build"]["steps"]
    runs = [step.get("run", "") for step in steps]
    assert "make setup" in runs
    assert 'make book PROFILE="$PROFILE"' in runs
    assert any(step.get("uses", "").startswith("actions/upload-pages-artifact") and
               step["with"]["path"] == "book/_build/html" for step in steps)


def test_the_reproducing_page_lists_the_settings_of_the_profile_table():
    """The settings table on the Reproducing page is the profile table's, as ``profiles.settings_markdown`` writes it
    (regenerate the page's table with it after changing a profile)."""
    page = (ROOT / "book" / "reproducing.md").read_text()
    assert profiles.settings_markdown() in page
    assert "`n_seeds=8`" in profiles.settings_markdown().split("`04_credit_assignment`")[1].split("\n")[0]


def test_the_reproducing_page_has_a_row_per_notebook():
    """Every notebook of the profile table has its row of wall times on the Reproducing page."""
    page = (ROOT / "book" / "reproducing.md").read_text()
    table = page.split("## What each profile costs", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(" `") for line in table.splitlines() if line.startswith("| `")}
    assert rows == set(profiles.notebook_names())


def test_a_book_starts_the_longest_notebooks_first(tmp_path, monkeypatch):
    assert set(profiles.BOOK_MINUTES) == set(profiles.notebook_names()), "every notebook has a measured time"
    started = []
    monkeypatch.setattr(runner, "_execute_for_book", lambda name, *args: started.append(name))
    names = ["01_neurons", "04_credit_assignment", "02_store_recall"]
    paths = runner.execute_all(names, "smoke", tmp_path, jobs=1)
    assert started == sorted(names, key=lambda name: -profiles.BOOK_MINUTES[name]) != names
    assert [p.stem for p in paths] == names, "the executed paths keep the order asked for"


def _sleeping_notebook(folder, first_sleep, later_sleep):
    """``96_sleeping``: its cell sleeps ``first_sleep`` seconds on the first execution, ``later_sleep`` after."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    body = ("import os, pathlib, time\nmarks = pathlib.Path(os.environ['RNNNOTES_RESULTS']) / 'attempts'\n"
            "marks.mkdir(parents=True, exist_ok=True)\nn = len(list(marks.iterdir()))\n"
            "(marks / str(n)).touch()\n"
            f"time.sleep({first_sleep} if n == 0 else {later_sleep})")
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, folder / "96_sleeping.ipynb")


@pytest.mark.parametrize("profile, later_sleep, succeeds", [("smoke", 0, True), ("smoke", 60, False),
                                                             ("book", 0, True)])
def test_a_cell_that_hangs_times_out_and_runs_once_more(tmp_path, monkeypatch, profile, later_sleep, succeeds):
    _sleeping_notebook(tmp_path, 60, later_sleep)
    monkeypatch.setenv("RNNNOTES_NOTEBOOKS", str(tmp_path))
    monkeypatch.setenv("RNNNOTES_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv(f"RNNNOTES_{profile.upper()}_CELL_TIMEOUT", "3")
    if succeeds:
        runner.run_isolated("96_sleeping", profile, output=tmp_path / "out.ipynb")
    else:
        with pytest.raises(runner.NotebookFailed, match="96_sleeping"):
            runner.run_isolated("96_sleeping", profile, output=tmp_path / "out.ipynb")
    assert len(list((tmp_path / "results" / "attempts").iterdir())) == 2, "one timeout, one more attempt, no more"


def test_cell_limits_by_profile(monkeypatch):
    """A book cell trains for minutes, a paper cell for hours: each profile has its own limit, paper none, and book
    none with overrides."""
    for variable in ("RNNNOTES_SMOKE_CELL_TIMEOUT", "RNNNOTES_BOOK_CELL_TIMEOUT"):
        monkeypatch.delenv(variable, raising=False)
    limits = runner.cell_timeout("smoke"), runner.cell_timeout("book"), runner.cell_timeout("paper")
    assert limits == (300, 1800, None)
    assert runner.cell_timeout("smoke", {"x": 1}) == 300
    assert runner.cell_timeout("book", {"n_iterations": 3000}) is None, "a book sweep's point may train for hours"


def test_a_sweep_point_is_executed_again_after_its_notebook_changed(failing_notebook, monkeypatch):
    """A finished point is reused only while its notebook is the one that finished it."""
    executed = []

    def run_logged(name, profile, point, *, output, env=None):
        executed.append(point)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("{}")
        return []
    monkeypatch.setattr(runner, "run_logged", run_logged)

    def statuses():
        outcomes = sweep.sweep("98_failing", "smoke", {"x": [1]}, executor=ThreadPoolExecutor(1))
        return [status for _, status, _ in outcomes]
    assert statuses() == ["done"] and statuses() == ["reused"]
    nb = nbformat.read(failing_notebook / "98_failing.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("print('a new figure')"))
    nbformat.write(nb, failing_notebook / "98_failing.ipynb")
    assert statuses() == ["resumed"] and statuses() == ["reused"]
    assert executed == [{"x": 1}, {"x": 1}]


@pytest.mark.parametrize("option,value,message", [
    ("minutes", 0, r"minutes \(--time\) must be a positive integer, got 0"), ("minutes", -5, "minutes"),
    ("gpus", -1, "gpus must be a non-negative integer, got -1"), ("mem_gb", -4, "mem_gb"), ("mem_gb", 0, "mem_gb"),
    ("mem_gb", 1.5, "mem_gb"), ("jobs", True, "jobs must be a positive integer, got True")])
def test_slurm_option_values_are_checked(tmp_path, option, value, message):
    with pytest.raises(profiles.ParameterError, match=message):
        sweep.executor("slurm", folder=tmp_path / "submitit", **{option: value})
    assert not (tmp_path / "submitit").exists()


@pytest.mark.parametrize("option,value,message", [("--time", "0", "minutes (--time)"), ("--gpus", "-1", "gpus"),
                                                  ("--mem", "0", "mem_gb (--mem)")])
def test_the_cli_refuses_bad_slurm_options_before_anything_is_submitted(tmp_path, option, value, message):
    done = cli("sweep", "no_such_notebook", "--executor", "slurm", option, value,
               env={"RNNNOTES_RESULTS": str(tmp_path)})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {message} must be")
    assert not list(tmp_path.iterdir())
