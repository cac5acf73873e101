"""Experiment builders, train_run's run key, sweeps of configs and the summary tables."""
import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pytest
import torch

from rnnnotes import experiments, spiking_experiments, store, summary, sweep
from rnnnotes.experiments import Run
from rnnnotes.model import Carry
from rnnnotes.rate_experiments import DelayedXORCredit
from rnnnotes.spiking_experiments import StoreRecall

TINY = dict(n_neurons=8, delay_ms=5, cue_ms=5, n_iterations=2, batch_size=4, eval_every=1)


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNNOTES_RESULTS", str(tmp_path))
    return tmp_path


def test_train_run_reuses_a_finished_run_and_keys_on_the_source(results, monkeypatch):
    config = DelayedXORCredit(rule="eprop", **TINY)
    first = experiments.train_run(config, progress=False)
    assert first.status == "finished" and len(first.history) == 2
    again = experiments.train_run(config, progress=False)
    assert again.run_dir == first.run_dir
    for a, b in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    assert store.read_json(first.run_dir / "params.json")["source"] == store.source_hash()
    monkeypatch.setattr(store, "source_hash", lambda: "changed")
    changed = experiments.train_run(config, progress=False)
    assert changed.run_dir != first.run_dir, "a changed package must not reuse an old run"


def test_source_hash_changes_with_any_module(tmp_path, monkeypatch):
    for name in ("store.py", "cells.py"):
        (tmp_path / name).write_text(f"# {name}\n")
    monkeypatch.setattr(store, "__file__", str(tmp_path / "store.py"))
    before = store.source_hash()
    assert len(before) == 12 and before == store.source_hash()
    (tmp_path / "cells.py").write_text("# cells.py, with a fix\n")
    assert store.source_hash() != before


def test_delayed_xor_validation_is_fixed_or_fresh_per_step():
    fixed = DelayedXORCredit(n_val_batches=2, **TINY)._validation(dict(batch_size=4, delay_ms=5, cue_ms=5))
    fresh = DelayedXORCredit(n_val_batches=2, fresh_validation=True, **TINY)._validation(
        dict(batch_size=4, delay_ms=5, cue_ms=5))
    assert isinstance(fixed, list) and len(fixed) == 2
    at_20, at_40 = fresh(20), fresh(40)
    assert len(at_20) == 2 and torch.equal(at_20[0].x, fresh(20)[0].x), "the same step draws the same batches"
    assert not torch.equal(at_20[0].x, at_40[0].x) and not torch.equal(at_20[0].x, at_20[1].x)


def test_delayed_xor_random_feedback_is_the_seeds_fixed_matrix():
    symmetric = DelayedXORCredit(rule="eprop", seed=3, **TINY).build("cpu").rule
    random = DelayedXORCredit(rule="eprop", feedback="random", seed=3, **TINY).build("cpu").rule
    again = DelayedXORCredit(rule="eprop", feedback="random", seed=3, **TINY).build("cpu").rule
    other = DelayedXORCredit(rule="eprop", feedback="random", seed=4, **TINY).build("cpu").rule
    assert symmetric.feedback is None and random.feedback.shape == (8, 2)
    assert torch.equal(random.feedback, again.feedback) and not torch.equal(random.feedback, other.feedback)
    with pytest.raises(ValueError, match="feedback"):
        DelayedXORCredit(rule="eprop", feedback="transposed", **TINY).build("cpu")


def test_builders_assemble_their_pieces():
    setup = DelayedXORCredit(rule="modprop", mu=0.5, **TINY).build("cpu")
    assert setup.rule.name == "modprop" and setup.rewiring is not None and setup.config.steps == 2
    assert DelayedXORCredit(rule="modprop_true_w", **TINY).build("cpu").rule.name == "modprop_true_w"
    signs = setup.rewiring.state_dict()["signs"]["w_rec"]
    w = setup.model.cell.w_rec.detach()
    assert torch.all(w * signs >= 0), "DEEP R's init keeps Dale's signs"
    assert torch.all(w.diagonal() == 0)
    recall = StoreRecall(n_symbols=4, symbol_ms=10)
    validation, test = recall.trials("validation")(0).batch, recall.trials("test")(0).batch
    assert not torch.equal(validation.x, test.x), "validation and test come from different streams"
    with pytest.raises(ValueError, match="variant"):
        spiking_experiments.SequentialMNIST(variant="lstm")


def test_smnist_held_out_set_smaller_than_a_training_batch_is_evaluated_whole():
    setup = spiking_experiments.SequentialMNIST(n_regular=4, n_adaptive=4, batch_size=16, max_test=8).build("cpu")
    metrics = setup.evaluate(setup.model)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and float(metrics["accuracy"] * 8).is_integer(), "one batch of 8"


@dataclass(frozen=True)
class Broken:
    notebook = "broken"

    def build(self, device):
        raise RuntimeError("no network")


def test_train_all_reports_a_failure_and_runs_the_rest(results):
    runs = sweep.train_all({"bad": Broken(), "good": DelayedXORCredit(**TINY)})
    assert runs["bad"].status == "failed" and "no network" in runs["bad"].message
    assert runs["good"].status == "finished"


def _run(values, metric="m"):
    history = pd.DataFrame({"step": range(1, len(values) + 1), metric: values})
    return Run(None, None, history, "finished", "", None)


def test_tail_mean_and_final_table_by_hand():
    assert summary.tail_mean(_run([1.0, np.nan, 3.0, 5.0, 7.0]).history, "m", fraction=0.5) == 6.0
    assert summary.tail_mean(_run([1.0, 2.0]).history, "m", fraction=0) == 2.0
    assert math.isnan(summary.tail_mean(_run([1.0]).history, "other"))
    runs = {("a", 0): _run([0.0, 2.0]), ("a", 1): _run([0.0, 4.0]), ("b", 0): _run([1.0, 1.0])}
    table = summary.final_table(runs, ["m"], fraction=0.5)
    assert table.loc["a", "m"] == 3.0 and table.loc["a", "m sem"] == pytest.approx(1.0 / math.sqrt(2))
    assert table.loc["b", "m"] == 1.0 and table.loc["b", "runs"] == 1
    frames = summary.curves(runs, "m")
    assert list(frames["a"].columns) == [0, 1] and frames["a"].loc[2].tolist() == [2.0, 4.0]


def test_curvature_run_stores_the_dense_hessians_top_eigenvalue(results):
    from rnnnotes import hessian
    from rnnnotes.curvature import hessian_loss
    from rnnnotes.rate_experiments import RowMNISTCurvature
    config = RowMNISTCurvature(rule="eprop", n_hidden=5, n_iterations=2, batch_size=8, eval_every=2, n_hessian=16)
    run = experiments.train_run(config, progress=False)
    stored = run.history["eval_lambda_max"].dropna()
    assert len(stored) == 1 and run.history["eval_hvp_calls"].dropna().iloc[-1] > 0
    model = run.model.double()
    batch = config.held_out()
    loss_fn, params = hessian_loss(model, run.objective, replace(batch, x=batch.x.double()))
    exact = torch.linalg.eigvalsh(hessian.dense_hessian(loss_fn, params))
    assert stored.iloc[-1] == pytest.approx(exact.max().item(), rel=1e-3)  # float32 run vs float64 dense
    assert run.history["eval_lambda_abs_max"].dropna().iloc[-1] == pytest.approx(exact.abs().max().item(), rel=1e-3)
    double = replace(batch, x=batch.x.double())
    task_only, _ = hessian.model_loss(
        model, lambda run_, w: torch.nn.functional.cross_entropy(run_(double.x).out[-1], double.y[-1]),
        names=["cell.w_rec"])
    with_l2 = hessian.dense_hessian(loss_fn, params)
    torch.testing.assert_close(with_l2, hessian.dense_hessian(task_only, params) + 0.01 * torch.eye(25).double())


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_hessian=0), "n_hessian must be a positive number"), (dict(n_hessian=2.5), "n_hessian must be an integer"),
    (dict(n_hidden=0), "n_hidden must be a positive number"), (dict(n_iterations=0), "n_iterations must be"),
    (dict(lr=-0.01), "lr must be a positive number"), (dict(l2=-0.01), "l2 must be a finite number >= 0")])
def test_curvature_config_names_a_setting_that_cannot_run(kwargs, message):
    from rnnnotes.rate_experiments import RowMNISTCurvature
    with pytest.raises(ValueError, match=message):
        RowMNISTCurvature(**kwargs)


def test_curvature_evaluation_set_and_samples_sweep_name_their_bad_sizes():
    from rnnnotes.curvature import samples_sweep
    from rnnnotes.rate_experiments import RowMNISTCurvature
    config = RowMNISTCurvature(n_hessian=10 ** 6)
    with pytest.raises(ValueError, match=r"n_hessian must be at most the \d+ held-out digits, got 1000000"):
        config.held_out()
    for kwargs, message in [(dict(sizes=[8], draws=0), "draws must be a positive number"),
                            (dict(sizes=[], draws=2), "sizes must be a non-empty list of positive integers"),
                            (dict(sizes=[0, 8], draws=2), "sizes must be a non-empty list")]:
        with pytest.raises(ValueError, match=message):
            samples_sweep(None, None, None, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0.0), "lr must be a positive number"), (dict(lr_decay=-0.3), r"lr_decay must be a number in \(0, 1\]"),
    (dict(lr_decay=0.0), "lr_decay must be"), (dict(decay_every=0), "decay_every must be a positive number"),
    (dict(stop_accuracy=-1.0), "stop_accuracy must be a finite number >= 0"),
    (dict(rate_weight=-1.0), "rate_weight must be a finite number >= 0")])
def test_store_recall_refuses_settings_that_cannot_train_before_a_step(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StoreRecall(**kwargs).build("cpu")


def test_store_recall_lif_control_and_the_tutorials_protocol_options():
    control = StoreRecall(n_regular=20, n_adaptive=0, n_symbols=4, symbol_ms=20, n_delay=1)
    setup = control.build("cpu")
    cell = setup.model.cell
    assert cell.n == 20 and cell.n_adaptive == 0 and torch.all(cell.beta == 0)
    with torch.no_grad():
        hidden = setup.model(control.trials("train")(0).batch.x).hidden
    assert hidden.z.sum() > 0 and torch.all(hidden.threshold == cell.params.thr), "no neuron adapts"
    assert setup.config.stop_every == 1 and not setup.config.carry_state and setup.evaluate.carry is None
    tutorial = StoreRecall(stop_every=20, carry_state=True).build("cpu")
    assert tutorial.config.stop_every == 20 and tutorial.config.carry_state and tutorial.evaluate.carry is not None
    for bad, name in ((dict(stop_every=0), "stop_every"), (dict(carry_state=1), "carry_state"),
                      (dict(fresh_validation=1), "fresh_validation"), (dict(n_adaptive=-1), "n_adaptive")):
        with pytest.raises(ValueError, match=name):
            StoreRecall(**bad).build("cpu")


def test_store_recall_validates_a_fixed_or_a_fresh_batch_and_tests_from_rest_or_chained():
    small = StoreRecall(n_symbols=4, symbol_ms=20, batch_size=4, n_delay=1)
    fixed, fresh = small.build("cpu"), replace(small, fresh_validation=True).build("cpu")
    with torch.no_grad():
        assert fixed.evaluate(fixed.model, step=1) == fixed.evaluate(fixed.model, step=2)
        assert fresh.evaluate(fresh.model, step=1) == fresh.evaluate(fresh.model, step=1)
        assert fresh.evaluate(fresh.model, step=1) != fresh.evaluate(fresh.model, step=2)
    carried = replace(small, carry_state=True)
    rest, chained = small.test(fixed.objective, fixed.model, 2), carried.test(fixed.objective, fixed.model, 2)
    stream = small.trials("test")
    with torch.no_grad():  # the chain by hand: an unscored batch, then the two scored ones
        carry = Carry()
        fixed.objective(fixed.model, stream(2).batch, carry=carry)
        by_hand = [fixed.objective(fixed.model, stream(k).batch, carry=carry)[1]["loss"] for k in range(2)]
        from_rest = [fixed.objective(fixed.model, stream(k).batch)[1]["loss"] for k in range(2)]
    assert chained["loss"] == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    assert rest["loss"] == pytest.approx(sum(from_rest) / 2, rel=1e-6) and rest["loss"] != chained["loss"]


def test_original_curve_smooths_drops_the_worst_and_best_run_and_averages_by_hand():
    """ModProp's plot: moving mean over full windows, the largest- then the smallest-area run dropped."""
    frame = pd.DataFrame({"a": [1.0] * 5, "b": [3.0] * 5, "c": [0.0] * 5, "d": [2.0, 2, 2, 2, 4]},
                         index=[20, 40, 60, 80, 100])
    curve = summary.original_curve(frame, window=2)
    assert curve.index.tolist() == [40, 60, 80, 100]
    assert curve["mean"].tolist() == [1.5, 1.5, 1.5, 2.0] and curve["runs"].tolist() == [2] * 4
    assert np.allclose(curve["std"], [2 ** -0.5] * 3 + [2 ** 0.5])
    two = summary.original_curve(frame[["a", "b"]], window=1)  # fewer than three runs: none dropped
    assert two["mean"].tolist() == [2.0] * 5
    with pytest.raises(ValueError, match="window must be a positive integer"):
        summary.original_curve(frame, window=0)
