"""The training loop: resume after a kill is bitwise identical, divergence stops cleanly, finished runs are reused."""
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

from rnnnotes import store
from rnnnotes.cells import ALIF
from rnnnotes.losses import Objective
from rnnnotes.model import Network, Readout
from rnnnotes.tasks import TaskStream, delayed_xor
from rnnnotes.train import FitConfig, Training, evaluator, fit

SCRIPT = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from rnnnotes.cells import ALIF
    from rnnnotes.losses import Objective
    from rnnnotes.model import Network, Readout
    from rnnnotes.tasks import TaskStream, delayed_xor
    from rnnnotes.train import FitConfig, Training, fit
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = Network(ALIF(2, 6, 6, seed=1), Readout(12, 2, tau_out=20.0, seed=2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=40, gamma=0.5)
    task = TaskStream(delayed_xor, seed=3, batch_size=8, delay_ms=60, cue_ms=20)
    fit(Training(model, task, Objective(rate_weight=0.1), opt, FitConfig(steps=int(sys.argv[2]), checkpoint_every=10,
        progress=False), scheduler=sched), run_dir=Path(sys.argv[1]))
""")


def _launch(run_dir, steps):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(run_dir), str(steps)])


def test_killed_run_resumes_bitwise_identical(tmp_path):
    steps = 200
    reference = tmp_path / "reference"
    reference.mkdir()
    assert _launch(reference, steps).wait(timeout=300) == 0

    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    proc = _launch(interrupted, steps)
    deadline = time.time() + 120
    while not (interrupted / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (interrupted / "result.json").exists()
    killed_at = torch.load(interrupted / "checkpoint.pt", weights_only=False)["step"]
    assert 0 < killed_at < steps
    assert _launch(interrupted, steps).wait(timeout=300) == 0

    a, b = torch.load(reference / "model.pt"), torch.load(interrupted / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(pd.read_csv(reference / "metrics.csv"), pd.read_csv(interrupted / "metrics.csv"))


def _small_problem(lr):
    torch.manual_seed(0)
    model = Network(ALIF(2, 4, 4, seed=1), Readout(8, 2, seed=2))
    task = TaskStream(delayed_xor, seed=0, batch_size=4, delay_ms=20, cue_ms=10)
    return model, task, torch.optim.SGD(model.parameters(), lr=lr)


def test_diverging_run_stops_with_message_and_loadable_checkpoint(tmp_path, capsys):
    model, task, opt = _small_problem(lr=1e6)
    result = fit(Training(model, task, Objective(), opt, FitConfig(steps=50, checkpoint_every=1, progress=False)),
                 run_dir=tmp_path)
    assert result.status == "diverged"
    assert "not finite or above max_loss" in result.message and result.message in capsys.readouterr().out
    assert result.history["loss"].map(lambda v: v == v).all(), "no NaN is written to the metrics"
    ckpt = store.load_torch(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == len(result.history)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    fresh, _, _ = _small_problem(lr=1.0)
    fresh.load_state_dict(ckpt["model"])
    assert store.read_json(tmp_path / "result.json")["status"] == "diverged"


def test_finished_run_is_reused_not_recomputed(tmp_path):
    model, task, opt = _small_problem(lr=0.01)
    first = fit(Training(model, task, Objective(), opt, FitConfig(steps=5, progress=False)), run_dir=tmp_path)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    other, _, opt2 = _small_problem(lr=0.01)
    calls = []
    second = fit(Training(other, lambda step: calls.append(step) or task(step), Objective(), opt2,
                          FitConfig(steps=5, progress=False)), run_dir=tmp_path)
    assert calls == [] and second.status == "finished"
    pd.testing.assert_frame_equal(first.history, second.history, check_dtype=False)
    assert all(torch.equal(trained[k], v) for k, v in other.state_dict().items())


def test_evaluation_columns_and_learning(tmp_path):
    model, task, _ = _small_problem(lr=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    val = evaluator(Objective(), [task(10_000 + i) for i in range(2)])
    result = fit(Training(model, task, Objective(), opt, FitConfig(steps=6, eval_every=3, progress=False),
                          evaluate=val))
    assert result.history["eval_accuracy"].notna().tolist() == [False, False, True, False, False, True]
    assert {"loss", "task_loss", "accuracy", "rate_hz", "lr"} <= set(result.history.columns)


@pytest.mark.parametrize("kwargs, name", [({"steps": 0}, "steps"), ({"steps": 5, "checkpoint_every": 0},
                                          "checkpoint_every"), ({"steps": 5, "eval_every": -1}, "eval_every")])
def test_bad_config_is_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FitConfig(**kwargs)


def test_early_stop_when_the_target_is_reached():
    model, task, _ = _small_problem(lr=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    config = FitConfig(steps=50, progress=False, stop_metric="accuracy", stop_at=0.0, stop_window=3)
    result = fit(Training(model, task, Objective(), opt, config))
    assert len(result.history) == 3 and result.status == "finished" and "reached" in result.message


def test_time_budget_ends_the_run():
    model, task, _ = _small_problem(lr=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    result = fit(Training(model, task, Objective(), opt, FitConfig(steps=10_000, progress=False, max_seconds=0.5)))
    assert 0 < len(result.history) < 10_000 and "time budget" in result.message
