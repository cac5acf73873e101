"""Seeds as one batched model: each seed of a group trains exactly as its own run, and is stored as one."""
from dataclasses import replace

import pandas as pd
import pytest
import torch

from rnnnotes import credit, experiments, seeds, sweep
from rnnnotes.rate_experiments import DelayedXORCredit, RowMNISTCurvature
from rnnnotes.seeds import fit_seeds, train_runs
from rnnnotes.train import fit

SMALL = dict(n_neurons=12, delay_ms=20, cue_ms=10, batch_size=6, n_iterations=4, eval_every=2)


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNNOTES_RESULTS", str(tmp_path))
    return tmp_path


def _float64(training):
    """``training`` in float64 (model and batches); no evaluation, whose fixed batches stay float32."""
    training.model.double()
    task = training.task
    return training._replace(task=lambda step: replace(task(step), x=task(step).x.double()), evaluate=None)


def _trainings(config, seeds, prepare=lambda t: t):
    return [prepare(replace(config, seed=s).build("cpu")) for s in seeds]


def _max_difference(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def _assert_same_runs(alone, together, *, tol):
    for (t1, r1), (t2, r2) in zip(alone, together):
        assert r1.status == r2.status
        pd.testing.assert_frame_equal(r1.history, r2.history, check_exact=False, rtol=0, atol=tol)
        assert _max_difference(t1.model, t2.model) <= tol


def _both(config, seeds, prepare):
    """Each seed trained alone by ``fit``, and all of them by ``fit_seeds``: two lists of (training, result)."""
    alone = [(t, fit(t)) for t in _trainings(config, seeds, prepare)]
    group = _trainings(config, seeds, prepare)
    return alone, list(zip(group, fit_seeds(group)))


@pytest.mark.parametrize("rule", ["bptt", "eprop", "mdgl", "modprop"])
def test_each_seed_of_a_group_trains_as_it_does_alone_float64(rule):
    alone, together = _both(DelayedXORCredit(rule=rule, **SMALL), [0, 1, 2], _float64)
    _assert_same_runs(alone, together, tol=1e-10)
    (_, first), (_, second) = together[:2]
    assert (first.history["loss"] - second.history["loss"]).abs().max() > 1e-3, "seeds must not share data"
    assert _max_difference(together[0][0].model, together[1][0].model) > 1e-3, "nor initial weights"


def test_random_feedback_differs_by_seed_and_matches_the_runs_alone():
    def random_feedback(training):
        cell = training.model.cell
        rule = credit.make_rule("eprop", cell, feedback="random", n_out=2, seed=cell.seed)
        return _float64(training._replace(rule=rule))
    alone, together = _both(DelayedXORCredit(rule="eprop", **SMALL), [3, 4], random_feedback)
    assert not torch.equal(together[0][0].rule.feedback, together[1][0].rule.feedback)
    _assert_same_runs(alone, together, tol=1e-10)


def test_float32_with_evaluation_and_clipping_matches_the_runs_alone():
    def clipped(training):
        return training.with_config(clip_norm=0.05)
    alone, together = _both(DelayedXORCredit(rule="modprop", **SMALL), [0, 1], clipped)
    assert "eval_task_loss" in together[0][1].history
    _assert_same_runs(alone, together, tol=1e-5)


@pytest.mark.parametrize("rule, feedback", [("bptt", "symmetric"), ("eprop", "random")])
def test_curvature_runs_train_and_measure_their_hessian_as_they_do_alone(rule, feedback):
    """Notebook 05's setting: plain SGD, the L2 term, each seed's own digit split, and the top Hessian eigenvalue
    measured during training on the live weights of each seed."""
    config = RowMNISTCurvature(rule=rule, feedback=feedback, n_hidden=8, n_iterations=4, batch_size=8,
                               eval_every=2, n_hessian=16)
    alone = [(t, fit(t)) for t in _trainings(config, [0, 1])]
    group = _trainings(config, [0, 1])
    together = list(zip(group, fit_seeds(group)))
    for (t1, r1), (t2, r2) in zip(alone, together):
        pd.testing.assert_frame_equal(r1.history, r2.history, check_exact=False, rtol=1e-4, atol=1e-6)
        assert _max_difference(t1.model, t2.model) <= 1e-5
    first, second = (r.history["eval_lambda_max"].dropna() for _, r in together)
    assert len(first) == 2 and (first - second).abs().max() > 1e-3, "each seed's own weights and digits"


def test_a_diverging_seed_stops_and_keeps_its_weights_while_the_others_train():
    def blow_up_seed_1(training):
        if training.model.cell.seed == 1:
            with torch.no_grad():
                training.model.readout.b_out[0] = 1e6
        return _float64(training)
    config = DelayedXORCredit(rule="bptt", **SMALL)
    alone, together = _both(config, [0, 1], blow_up_seed_1)
    _assert_same_runs(alone, together, tol=1e-10)
    (diverged, result), = together[1:]
    assert result.status == "diverged" and len(result.history) == 0
    assert _max_difference(diverged.model, _trainings(config, [1], blow_up_seed_1)[0].model) == 0


def test_a_group_with_a_diverged_seed_is_reused_with_the_weights_it_ended_with(tmp_path):
    def blow_up_seed_1(training):
        if training.model.cell.seed == 1:
            with torch.no_grad():
                training.model.readout.b_out[0] = 1e6
        return training
    dirs = [tmp_path / "0", tmp_path / "1"]
    for d in dirs:
        d.mkdir()
    runs = []
    for _ in range(2):  # trained, then reused
        trainings = _trainings(DelayedXORCredit(rule="bptt", **SMALL), [0, 1], blow_up_seed_1)
        runs.append(list(zip(trainings, fit_seeds(trainings, run_dirs=dirs))))
    for (t1, r1), (t2, r2) in zip(*runs):
        assert r1.status == r2.status and r1.message == r2.message
        pd.testing.assert_frame_equal(r1.history, r2.history)
        assert _max_difference(t1.model, t2.model) == 0
    assert [r.status for _, r in runs[1]] == ["finished", "diverged"] and runs[1][1][1].history.empty


def test_a_group_resumes_from_checkpoints_and_a_run_alone_from_the_group(results):
    config = DelayedXORCredit(rule="eprop", **SMALL)
    names = ["eprop-0", "eprop-1"]
    dirs = [experiments.run_directory(replace(config, seed=s), name, torch.device("cpu"))
            for s, name in zip([0, 1], names)]
    half = [t.with_config(steps=2, checkpoint_every=2) for t in _trainings(config, [0, 1])]
    fit_seeds(half, run_dirs=dirs)
    for run_dir in dirs:  # as if interrupted right after the checkpoint of step 2
        (run_dir / "result.json").unlink()
    resumed = fit_seeds([_trainings(config, [0])[0]], run_dirs=dirs[:1])[0]
    alone = fit(_trainings(config, [1])[0], run_dir=dirs[1])
    for s, result in enumerate([resumed, alone]):
        reference = fit(_trainings(config, [s])[0])
        pd.testing.assert_frame_equal(result.history, reference.history, check_exact=False, rtol=0, atol=1e-5)
    runs = train_runs([replace(config, seed=s) for s in (0, 1)], names=names, progress=False)
    assert [r.run_dir for r in runs] == dirs, "finished runs are reused from their own directories"


def test_a_killed_group_keeps_the_seed_that_stopped_early(tmp_path, monkeypatch):
    """Seed 0 reaches its target at step 2, a checkpoint step; the group is killed at step 3. Resumed, seed 0 keeps
    its two rows and weights and seed 1 trains on, both as in the group that was not interrupted."""
    def group(name):
        trainings = []
        for t in _trainings(DelayedXORCredit(rule="bptt", **{**SMALL, "n_iterations": 6}), [0, 1]):
            target = float(t.model.cell.seed == 0)
            trainings.append(t._replace(evaluate=lambda model, target=target: {"target": target}).with_config(
                eval_every=1, checkpoint_every=2, stop_metric="eval_target", stop_at=0.5, stop_every=2))
        dirs = [tmp_path / f"{name}{s}" for s in (0, 1)]
        for d in dirs:
            d.mkdir(exist_ok=True)
        return trainings, dirs
    reference, dirs = group("reference")
    expected = fit_seeds(reference, run_dirs=dirs)
    assert [len(r.history) for r in expected] == [2, 6]
    real = seeds.train_step

    def killed(group, step, live):
        if step == 3:
            raise KeyboardInterrupt
        return real(group, step, live)
    monkeypatch.setattr(seeds, "train_step", killed)
    trainings, dirs = group("resumed")
    with pytest.raises(KeyboardInterrupt):
        fit_seeds(trainings, run_dirs=dirs)
    monkeypatch.undo()
    trainings, dirs = group("resumed")
    for t1, r1, t2, r2 in zip(reference, expected, trainings, fit_seeds(trainings, run_dirs=dirs)):
        assert r1.message == r2.message
        pd.testing.assert_frame_equal(r1.history, r2.history)
        assert _max_difference(t1.model, t2.model) == 0


def test_train_vectorized_stores_runs_where_train_all_does(results):
    configs = {(rule, s): DelayedXORCredit(rule=rule, seed=s, **SMALL) for rule in ("bptt", "mdgl") for s in (0, 1)}
    grouped = sweep.train_vectorized(configs)
    assert list(grouped) == list(configs) and all(r.status == "finished" for r in grouped.values())
    one_by_one = sweep.train_all(configs)
    for key, run in grouped.items():
        assert one_by_one[key].run_dir == run.run_dir
        pd.testing.assert_frame_equal(one_by_one[key].history, run.history)  # reused from disk
    with pytest.raises(ValueError, match="only in seed"):
        train_runs([DelayedXORCredit(**SMALL), DelayedXORCredit(lr=1e-2, **SMALL)], names=["a", "b"])
