"""The training loop: resume after a kill is bitwise identical, divergence stops cleanly, finished runs are reused."""
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

from rnnnotes import fused, store, train
from rnnnotes.cells import ALIF
from rnnnotes.losses import Objective
from rnnnotes.model import Carry, Network, NetworkOutput, Readout
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


def _diverging_fit(run_dir, max_loss):
    """The model and result of a run at lr 1e6, whose losses are 0.73, then 5e5."""
    model, task, opt = _small_problem(lr=1e6)
    config = FitConfig(steps=5, max_loss=max_loss, progress=False)
    return model, fit(Training(model, task, Objective(), opt, config), run_dir=run_dir)


def test_a_run_diverged_at_its_first_step_is_reused(tmp_path):
    _, first = _diverging_fit(tmp_path, max_loss=0.5)
    _, again = _diverging_fit(tmp_path, max_loss=0.5)
    assert first.status == again.status == "diverged" and again.message == first.message
    assert len(first.history) == len(again.history) == 0


def test_a_reused_diverged_run_has_the_weights_it_ended_with(tmp_path):
    model, first = _diverging_fit(tmp_path, max_loss=1e4)
    reused, again = _diverging_fit(tmp_path, max_loss=1e4)
    assert first.status == again.status == "diverged" and len(again.history) == 1
    assert not (tmp_path / "checkpoint.pt").exists(), "the weights come from the stored result"
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reused.parameters()))
    assert not torch.equal(reused.readout.w_out, _small_problem(lr=1e6)[0].readout.w_out), "trained one step"


def test_run_dir_may_be_a_str(tmp_path):
    model, task, opt = _small_problem(lr=0.01)
    first = fit(Training(model, task, Objective(), opt, FitConfig(steps=2, progress=False)), run_dir=str(tmp_path))
    assert first.status == "finished" and (tmp_path / "result.json").exists()


def test_a_run_killed_after_its_early_stop_was_checkpointed_ends_as_it_stopped(tmp_path, monkeypatch):
    """The stop is reached on a checkpoint step and the process dies before the result is stored: resumed, the
    run stops there, with the same rows and weights as the run that was not interrupted."""
    def run(run_dir):
        model, stream, _ = _small_problem(lr=0.0)
        config = FitConfig(steps=9, checkpoint_every=3, progress=False, stop_metric="accuracy", stop_at=0.0,
                           stop_every=3)
        opt, calls = torch.optim.Adam(model.parameters(), lr=0.01), []
        training = Training(model, lambda step: calls.append(step) or stream(step), Objective(), opt, config)
        return model, fit(training, run_dir=run_dir), calls
    for name in ("reference", "resumed"):
        (tmp_path / name).mkdir()
    model, reference, _ = run(tmp_path / "reference")
    assert len(reference.history) == 3 and "reached" in reference.message

    def killed(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "_finish", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed")
    monkeypatch.undo()
    assert store.load_torch(tmp_path / "resumed" / "checkpoint.pt")["step"] == 3
    resumed_model, resumed, calls = run(tmp_path / "resumed")
    assert calls == [] and resumed.message == reference.message
    pd.testing.assert_frame_equal(reference.history, resumed.history)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed_model.parameters()))


def test_evaluation_columns_and_learning(tmp_path):
    model, task, _ = _small_problem(lr=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    val = evaluator(Objective(), [task(10_000 + i) for i in range(2)])
    result = fit(Training(model, task, Objective(), opt, FitConfig(steps=6, eval_every=3, progress=False),
                          evaluate=val))
    assert result.history["eval_accuracy"].notna().tolist() == [False, False, True, False, False, True]
    assert {"loss", "task_loss", "accuracy", "rate_hz", "lr"} <= set(result.history.columns)


def test_a_fresh_validation_set_is_drawn_for_each_evaluation_step(tmp_path):
    model, task, _ = _small_problem(lr=0.0)
    asked = []
    fresh = evaluator(Objective(), lambda step: asked.append(step) or [task(10_000 + step)])
    fixed = evaluator(Objective(), [task(10_000)])
    histories = [fit(Training(model, task, Objective(), torch.optim.SGD(model.parameters(), lr=0.0),
                              FitConfig(steps=6, eval_every=2, progress=False), evaluate=e)).history
                 for e in (fresh, fixed)]
    assert asked == [2, 4, 6], "the evaluator gets the number of steps trained"
    losses = [h["eval_task_loss"].dropna().to_numpy() for h in histories]
    assert len(set(losses[0].round(8))) == 3, "an untrained model scores differently on three different sets"
    assert len(set(losses[1].round(8))) == 1, "with lr 0 a fixed set gives the same loss each time"
    one_argument = fit(Training(model, task, Objective(), torch.optim.SGD(model.parameters(), lr=0.0),
                                FitConfig(steps=2, eval_every=1, progress=False),
                                evaluate=lambda m: {"calls": 1.0})).history
    assert one_argument["eval_calls"].tolist() == [1.0, 1.0], "evaluate(model) without a step still works"


@pytest.mark.parametrize("kwargs, name", [({"steps": 0}, "steps"), ({"steps": 5, "checkpoint_every": 0},
                                          "checkpoint_every"), ({"steps": 5, "eval_every": -1}, "eval_every"),
                                          ({"steps": 5, "stop_every": 0}, "stop_every"),
                                          ({"steps": 5, "stop_every": 2.5}, "stop_every"),
                                          ({"steps": 5, "carry_state": "yes"}, "carry_state")])
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


def test_stop_rule_is_checked_every_stop_every_steps():
    model, task, _ = _small_problem(lr=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    config = FitConfig(steps=50, progress=False, stop_metric="accuracy", stop_at=0.0, stop_window=3, stop_every=5)
    result = fit(Training(model, task, Objective(), opt, config))
    assert len(result.history) == 5 and "reached" in result.message


def _carry_problem():
    """An LSNN with delays and refractoriness whose state at the end of a trial is not the zero state."""
    model = Network(ALIF(2, 4, 4, tau_a=200.0, thr=0.01, n_ref=2, n_delay=3, seed=1), Readout(8, 2, seed=2))
    task = TaskStream(delayed_xor, seed=0, batch_size=4, delay_ms=20, cue_ms=10)
    return model, task, torch.optim.Adam(model.parameters(), lr=0.05)


def _carry_fit(steps, carry_state, run_dir=None, task=None, evaluate=None):
    model, stream, opt = _carry_problem()
    config = FitConfig(steps=steps, eval_every=1 if evaluate else 0, checkpoint_every=1, progress=False,
                       carry_state=carry_state)
    return model, fit(Training(model, task or stream, Objective(rate_weight=0.1), opt, config, evaluate=evaluate),
                      run_dir=run_dir)


def _hand_threaded(cell, batch, state):
    """The cell's output on ``batch`` from ``state`` (None: rest), stepped by hand, and its final state, detached."""
    state = state or cell.initial_state(batch.x.shape[1])
    outputs = []
    for i_t in cell.input_current(batch.x):
        out, state = cell.step(i_t, state)
        outputs.append(out)
    return type(outputs[0])(*(torch.stack(o) for o in zip(*outputs))), type(state)(*(s.detach() for s in state))


def test_carried_state_is_the_hand_threaded_state_of_the_previous_batch(tmp_path):
    """Bit for bit on the plain path; the fused path, which reads the final state off its outputs, to rounding."""
    with fused.disabled():
        model, result = _carry_fit(3, True, run_dir=tmp_path)
    carried = store.load_torch(tmp_path / "checkpoint.pt")["carry"]
    (tmp_path / "fused").mkdir()
    fast_model, fast = _carry_fit(3, True, run_dir=tmp_path / "fused")
    fast_carried = store.load_torch(tmp_path / "fused" / "checkpoint.pt")["carry"]
    hand, task, opt = _carry_problem()
    state, objective, losses = None, Objective(rate_weight=0.1), []
    for step in range(3):  # thread the state through cell.step by hand
        batch = task(step)
        hidden, state = _hand_threaded(hand.cell, batch, state)
        opt.zero_grad()
        loss, _ = objective.loss(NetworkOutput(hand.readout(hidden.z), hidden), batch, {})
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert result.history["loss"].tolist() == losses
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), hand.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(carried, state)) and state.v.abs().sum() > 0
    torch.testing.assert_close(fast.history["loss"].tolist(), losses, rtol=1e-5, atol=0)
    for a, b in zip(fast_carried, state):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with fused.disabled():  # the same path as the carried run: equal on the first batch, then not
        zero = _carry_fit(3, False)[1].history["loss"].tolist()
    assert zero[0] == losses[0] and zero[1] != losses[1] and zero[2] != losses[2]


def test_resume_with_carried_state_is_bitwise_identical(tmp_path):
    for name in ("reference", "resumed"):
        (tmp_path / name).mkdir()
    model, reference = _carry_fit(6, True, run_dir=tmp_path / "reference")
    stream, calls = _carry_problem()[1], []

    def interrupted(step):
        if step == 4:
            raise KeyboardInterrupt
        return stream(step)
    with pytest.raises(KeyboardInterrupt):
        _carry_fit(6, True, run_dir=tmp_path / "resumed", task=interrupted)
    resumed_model, resumed = _carry_fit(6, True, run_dir=tmp_path / "resumed",
                                        task=lambda step: calls.append(step) or stream(step))
    assert calls == [4, 5], "the run resumes from its checkpoint after step 4"
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed_model.parameters()))
    pd.testing.assert_frame_equal(reference.history, resumed.history)


def test_carried_evaluation_chains_its_batches_across_evaluations_as_stepped_by_hand():
    model, stream, _ = _carry_problem()
    batches = [stream(100), stream(101)]
    carried, rest = evaluator(Objective(), batches, carry=Carry()), evaluator(Objective(), batches)
    with torch.no_grad():
        first, second, from_rest = carried(model), carried(model), rest(model)
        state, expected = None, []
        for _ in range(2):  # two evaluations: four batches in one chain
            losses = []
            for batch in batches:
                hidden, state = _hand_threaded(model.cell, batch, state)
                losses.append(Objective().loss(NetworkOutput(model.readout(hidden.z), hidden), batch, {})[0].item())
            expected.append(sum(losses) / 2)
    assert [first["loss"], second["loss"]] == pytest.approx(expected, rel=1e-6, abs=0)
    assert first["loss"] != pytest.approx(from_rest["loss"], rel=1e-6) and second["loss"] != first["loss"]


def test_resume_with_carried_validation_is_bitwise_identical(tmp_path):
    """The validation's own chain is checkpointed with the run: without it the resumed evaluations would restart
    from rest and differ."""
    stream = _carry_problem()[1]

    def validation():
        return evaluator(Objective(), lambda step: [stream(1000 + step)], carry=Carry())
    for name in ("reference", "resumed"):
        (tmp_path / name).mkdir()
    model, reference = _carry_fit(6, True, run_dir=tmp_path / "reference", evaluate=validation())

    def interrupted(step):
        if step == 4:
            raise KeyboardInterrupt
        return stream(step)
    with pytest.raises(KeyboardInterrupt):
        _carry_fit(6, True, run_dir=tmp_path / "resumed", task=interrupted, evaluate=validation())
    resumed_model, resumed = _carry_fit(6, True, run_dir=tmp_path / "resumed", evaluate=validation())
    assert reference.history["eval_loss"].notna().all()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed_model.parameters()))
    pd.testing.assert_frame_equal(reference.history, resumed.history)
