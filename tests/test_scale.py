"""Reproduction at scale: a diverging sweep point, a killed sweep resumed bitwise, seed sweeps aggregated by the
notebook, and a book drawn from stored runs without training."""
import os
import signal
import subprocess
import sys
import time

import nbformat
import psutil
import pytest
import torch

from rnnnotes import profiles, runner, store, sweep
from conftest import ROOT

SOURCE = ("from rnnnotes.rate_experiments import DelayedXORCredit\n"
          "from rnnnotes.sweep import train_all\n"
          "configs = {s: DelayedXORCredit(seed=s, lr=lr, n_iterations=steps, eval_every=0)\n"
          "           for s in range(seed, seed + n_seeds)}\n"
          "runs = train_all(configs, device='cpu')\n"
          "print({s: run.status for s, run in runs.items()})")


@pytest.fixture
def training_notebook(tmp_path, monkeypatch):
    """``97_training`` alone in ``$RNNNOTES_NOTEBOOKS``: trains seeds ``seed .. seed + n_seeds - 1`` of a small
    delayed-XOR network at learning rate ``lr`` for ``steps`` steps (checkpoints every 100) into
    ``$RNNNOTES_RESULTS`` = ``tmp_path/results``."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = nbformat.v4.new_code_cell("seed = 0\nn_seeds = 1\nlr = 1e-3\nsteps = 20")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(SOURCE)]
    nbformat.write(nb, tmp_path / "97_training.ipynb")
    monkeypatch.setenv("RNNNOTES_NOTEBOOKS", str(tmp_path))
    monkeypatch.setenv("RNNNOTES_RESULTS", str(tmp_path / "results"))
    return tmp_path


def _cli(*args, results, popen=False):
    env = {**os.environ, "RNNNOTES_RESULTS": str(results)}
    command = [sys.executable, "-m", "rnnnotes", *args]
    if popen:
        return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def _finished_runs(results):
    """``{path relative to results: (metrics.csv text, model.pt tensors)}`` of every finished training run."""
    found = {}
    for result in results.glob("04_credit_assignment/*/*/result.json"):
        run = result.parent
        found[str(run.relative_to(results))] = ((run / "metrics.csv").read_text(), store.load_torch(run / "model.pt"))
    return found


def test_a_diverging_point_fails_with_its_cause_and_the_others_are_kept(training_notebook):
    results = training_notebook / "results"
    rates = "1e-4,3e-4,1e-3,3e-3,1e6,1e-2"
    done = _cli("sweep", "97_training", "-g", f"lr={rates}", "-g", "steps=30", results=results)
    assert done.returncode == 1, done.stderr
    rows = (results / "sweeps" / "97_training" / "smoke" / "summary.csv").read_text().splitlines()
    statuses = {row.split(",")[0]: row.split(",")[2] for row in rows[1:]}
    assert statuses == {"0.0001": "done", "0.0003": "done", "0.001": "done", "0.003": "done", "1000000.0": "failed",
                        "0.01": "done"}, rows
    failed = next(row for row in rows if row.startswith("1000000.0"))
    assert "run 0 diverged: stopped at step 1: loss nan is not finite" in failed
    assert "1 failed" in done.stdout and "5 done" in done.stdout
    kept = [run for run in results.glob("04_credit_assignment/*/0/result.json")
            if store.read_json(run)["status"] == "finished"]
    assert len(kept) == 5 and all((run.parent / "model.pt").exists() for run in kept)


def _wait(condition, timeout, what):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_killed_sweep_resumes_and_ends_bitwise_as_an_uninterrupted_one(training_notebook):
    """SIGKILL of one point's kernel, then SIGTERM of the sweep; the re-run reuses the finished points (their
    files untouched), resumes the others from their checkpoints, and every run ends bitwise as in a sweep that was
    never interrupted."""
    axes = {"seed": [0, 1, 2, 3], "steps": [500]}
    clean = training_notebook / "clean"
    os.environ["RNNNOTES_RESULTS"] = str(clean)
    outcomes = sweep.sweep("97_training", "smoke", axes, executor=sweep.executor())
    assert {s for _, s, _ in outcomes} == {"done"}, sweep.summary(outcomes)
    killed = training_notebook / "results"
    os.environ["RNNNOTES_RESULTS"] = str(killed)
    proc = _cli("sweep", "97_training", "--seeds", "0,1,2,3", "-g", "steps=500", results=killed, popen=True)
    points = killed / "sweeps" / "97_training" / "smoke"
    _wait(lambda: list(points.glob("*.json")) and [c for c in killed.glob("04_credit_assignment/*/*/checkpoint.pt")
                                                   if not (c.parent / "result.json").exists()], 240,
          "a finished point and a checkpointed, unfinished run")
    kernels = psutil.Process(proc.pid).children(recursive=True)
    assert kernels, "the sweep's points run in kernel processes"
    kernels[-1].send_signal(signal.SIGKILL)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    psutil.wait_procs(kernels, timeout=30)
    assert not [k for k in kernels if k.is_running() and k.status() != psutil.STATUS_ZOMBIE], "orphaned kernels"
    finished = {p: p.stat().st_mtime_ns for p in points.glob("*.json")}
    finished_runs = {r: r.stat().st_mtime_ns for r in killed.glob("04_credit_assignment/*/*/result.json")}
    assert len(finished) < 4, "the sweep was killed before it ended"
    again = sweep.sweep("97_training", "smoke", axes, executor=sweep.executor())
    statuses = [status for _, status, _ in again]
    assert statuses.count("reused") == len(finished) and "failed" not in statuses, sweep.summary(again)
    assert "resumed" in statuses, "the killed points left their notebooks and resume"
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "reused points were not executed again"
    assert {r: r.stat().st_mtime_ns for r in finished_runs} == finished_runs
    reference, resumed = _finished_runs(clean), _finished_runs(killed)
    assert len(reference) == 4 and reference.keys() == resumed.keys()
    for key, (metrics, model) in reference.items():
        assert resumed[key][0] == metrics
        assert all(torch.equal(model[k], resumed[key][1][k]) for k in model)


def test_a_seed_sweep_feeds_the_notebook_at_full_count_and_a_stored_book_trains_nothing(training_notebook):
    """A sweep over seeds runs one seed per point (its seed count set to 1); the notebook at two seeds afterwards,
    executed with training forbidden, finds both runs in the store; with a run missing it fails naming it."""
    outcomes = sweep.sweep("97_training", "smoke", {"seed": [0, 1]}, executor=sweep.executor())
    assert [(p, s) for p, s, _ in outcomes] == [({"n_seeds": 1, "seed": 0}, "done"), ({"n_seeds": 1, "seed": 1},
                                                                                      "done")]
    folder = training_notebook / "stored"
    log = training_notebook / "log.jsonl"
    runner.run("97_training", "smoke", {"n_seeds": 2}, output=folder / "two.ipynb",
               env={"RNNNOTES_STORED_ONLY": "1", "RNNNOTES_RUN_LOG": str(log)})
    entries = store.read_run_log(log)
    assert [e["trained"] for e in entries] == [False, False] and {e["status"] for e in entries} == {"finished"}
    os.environ["RNNNOTES_RESULTS"] = str(training_notebook / "empty")
    with pytest.raises(runner.NotebookFailed) as missing:
        runner.execute_all(["97_training"], "smoke", folder, stored=True)
    lines = str(missing.value).splitlines()
    assert lines[0].startswith("runs missing from the store (run `make paper`")
    assert lines[1].startswith("  97_training: stored results only, but this run is not finished in the store: ")
    assert lines[1].split(": ")[-1].split(" ")[0].endswith("/0"), "the missing run is named by its directory"


def test_make_paper_runs_the_seeds_as_points_then_the_notebook_from_the_store(training_notebook):
    """``sweep.paper``: a notebook with seed counts runs one point per seed, then once at its full counts, which
    reuses every run the points stored (its run log shows no training)."""
    outcomes = sweep.paper(["97_training"], make_executor=sweep.executor)
    assert [(p, s) for p, s, _ in outcomes] == [({"notebook": "97_training", "n_seeds": 1, "seed": 0}, "done"),
                                                ({"notebook": "97_training"}, "done")]
    log = training_notebook / "log.jsonl"
    runner.run("97_training", "paper", output=training_notebook / "again.ipynb", env={"RNNNOTES_RUN_LOG": str(log)})
    assert [e["trained"] for e in store.read_run_log(log)] == [False]


@pytest.mark.parametrize("name", [n for n in profiles.notebook_names() if profiles.seed_counts(n)])
def test_each_notebook_runs_as_one_point_of_make_paper(name, tmp_path, monkeypatch):
    """``make paper`` executes a notebook once per seed, its seed counts set to 1 and ``seed`` to that seed: every
    check of the notebook must hold for any one seed (here 3, at ``smoke``), not only for the default's seeds."""
    monkeypatch.setenv("RNNNOTES_RESULTS", str(tmp_path / "results"))
    outcomes = sweep.sweep(name, "smoke", {"seed": [3]}, executor=sweep.executor(jobs=1))
    assert [status for _, status, _ in outcomes] == ["done"], sweep.summary(outcomes)
