"""Gradient alignment with BPTT: exact cases give cosine 1, approximations less; the trajectory is seeded."""
from dataclasses import replace

import pandas as pd
import pytest
import torch

from rnnnotes import alignment
from rnnnotes.cells import RateRNN
from rnnnotes.rate_experiments import DelayedXORCredit
from rnnnotes.losses import Objective
from rnnnotes.model import Network, Readout
from rnnnotes.tasks import TaskStream, delayed_xor

TINY = dict(n_neurons=8, delay_ms=6, cue_ms=4, batch_size=4)


def _net(n=6):
    torch.manual_seed(0)
    return Network(RateRNN(2, n, activation="relu", tau=5.0, seed=2), Readout(n, 2, tau_out=4.0, seed=3)).double()


def _batches(shift=0.0, n=2):
    """Delayed-XOR batches in float64; ``shift`` is added to every input."""
    stream = TaskStream(delayed_xor, seed=0, stream="test", batch_size=3, delay_ms=8, cue_ms=4)
    return [replace(stream(k), x=stream(k).x.double() + shift) for k in range(n)]


def _cosines(table, rule):
    return torch.tensor(table.loc[table["rule"] == rule, "cosine"].to_numpy())


def test_bptt_against_itself_is_one_for_every_parameter_and_batch():
    net = _net()
    table = alignment.gradient_cosines(net, Objective(l2_weight=1e-3), _batches(), ["bptt"])
    assert len(table) == 2 * (1 + len(list(net.parameters())))  # per batch: "all" and each tensor
    assert set(table["parameter"]) == {"all", "cell.w_in", "cell.w_rec", "readout.w_out", "readout.b_out"}
    torch.testing.assert_close(_cosines(table, "bptt"), torch.ones(len(table), dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_exact_rules_give_one_and_eprop_with_recurrence_less():
    net = _net()
    with torch.no_grad():  # every potential positive: relu' = 1, so modprop_true_w with mu = 1 is BPTT
        net.cell.w_in.abs_().add_(0.1)
        net.cell.w_rec.abs_().mul_(0.5)
    batches = _batches(shift=0.5)
    assert all((net(b.x).hidden.v > 0).all() for b in batches)
    rules = ["eprop", ("modprop_true_w", {"mu": 1.0}), ("modprop_true_w", {"mu": 0.5})]
    table = alignment.gradient_cosines(net, Objective(), batches, rules)
    assert (_cosines(table, "modprop_true_w(mu=1.0)") - 1).abs().max() < 1e-10
    for approximate in ("eprop", "modprop_true_w(mu=0.5)"):
        assert _cosines(table, approximate).min() < 1 - 1e-6, approximate
    with torch.no_grad():
        net.cell.w_rec.zero_()  # no recurrence: e-prop's cut removes nothing
    table = alignment.gradient_cosines(net, Objective(), batches, ["eprop"])
    assert (_cosines(table, "eprop") - 1).abs().max() < 1e-12


def test_cosine_is_invariant_to_scaling_the_loss():
    net, batches = _net(), _batches()

    def scaled(model, batch, rule=None):
        loss, metrics = Objective()(model, batch, rule)
        return 37.0 * loss, metrics

    rules = ["eprop", "mdgl", ("modprop", {"mu": 0.3, "n_types": 2})]
    plain = alignment.gradient_cosines(net, Objective(), batches, rules)
    table = alignment.gradient_cosines(net, scaled, batches, rules)
    assert (plain["cosine"] < 1 - 1e-6).any()
    pd.testing.assert_frame_equal(plain, table, check_exact=False, rtol=0, atol=1e-12)


def test_trajectory_rows_defaults_and_seeding():
    config = DelayedXORCredit(rule="eprop", **TINY)
    rules = ["bptt", "eprop", "modprop"]  # modprop takes the config's mu and E/I types
    table = alignment.alignment_trajectory(config, rules, n_steps=3, every=2, n_batches=2, device="cpu")
    assert list(table.columns) == ["seed", "step", "rule", "batch", "cosine"]
    assert len(table) == 3 * 3 * 2 and sorted(set(table["step"])) == [0, 2, 3]
    assert (table["seed"] == 0).all() and table["cosine"].notna().all()
    assert (_cosines(table, "bptt") - 1).abs().max() < 1e-5
    assert _cosines(table, "modprop").min() < 1 - 1e-4
    again = alignment.alignment_trajectory(config, rules, n_steps=3, every=2, n_batches=2, device="cpu")
    pd.testing.assert_frame_equal(table, again, check_exact=True)
    training = config.build("cpu")  # step 0 is the initial model on batches of the "alignment" stream
    stream = TaskStream(delayed_xor, seed=0, stream="alignment", batch_size=4, delay_ms=6, cue_ms=4)
    signs = training.rewiring.state_dict()["signs"]["w_rec"][:, 0]
    start = alignment.gradient_cosines(training.model, training.objective, [stream(0), stream(1)], rules,
                                       defaults={"mu": config.mu, "n_types": (signs > 0).long()})
    start = start[start["parameter"] == "all"]
    assert table.loc[table["step"] == 0, "cosine"].tolist() == start["cosine"].tolist()
    other = alignment.alignment_trajectory(replace(config, seed=1), rules, n_steps=3, every=2, n_batches=2,
                                           device="cpu")
    assert (other["seed"] == 1).all() and not other["cosine"].equals(table["cosine"])



def test_initial_alignment_is_the_trajectorys_step_zero_for_any_rule_of_the_config():
    """The untrained network, the same held-out batches and rule options as the trajectory's step 0, whatever rule
    the config trains with (it trains with none here)."""
    rules = ["bptt", "eprop", ("eprop", {"feedback": "random"}), "modprop"]
    trajectory = alignment.alignment_trajectory(DelayedXORCredit(rule="eprop", **TINY), rules, n_steps=1, every=1,
                                                n_batches=2, device="cpu")
    initial = alignment.initial_alignment(DelayedXORCredit(rule="modprop", **TINY), rules, n_batches=2,
                                          device="cpu")
    assert list(initial.columns) == ["seed", "rule", "batch", "cosine"] and len(initial) == 4 * 2
    step0 = trajectory[trajectory["step"] == 0].drop(columns="step").reset_index(drop=True)
    pd.testing.assert_frame_equal(initial, step0, check_exact=True)
    with pytest.raises(ValueError, match="config must be a DelayedXORCredit"):
        alignment.initial_alignment(_net(), rules, n_batches=1)
    with pytest.raises(ValueError, match="stream must differ"):
        alignment.initial_alignment(DelayedXORCredit(**TINY), rules, n_batches=1, stream="train", device="cpu")

@pytest.mark.parametrize("call, message", [
    (lambda net, b: alignment.gradient_cosines(net, Objective(), b, ["sgd"]), "rules: unknown rule 'sgd'"),
    (lambda net, b: alignment.gradient_cosines(net, Objective(), b, []), "rules must be a non-empty list"),
    (lambda net, b: alignment.gradient_cosines(net, Objective(), b, [("modprop", 0.5)]), "rules: each rule must"),
    (lambda net, b: alignment.gradient_cosines(net, Objective(), b, "eprop"), "rules must be a non-empty list"),
    (lambda net, b: alignment.gradient_cosines(net, Objective(), b, ["eprop", "eprop"]), "rules: 'eprop' is listed"),
    (lambda net, b: alignment.gradient_cosines(net, Objective(), [], ["eprop"]), "batches must be a non-empty"),
    (lambda net, b: alignment.gradient_cosines(net.cell, Objective(), b, ["eprop"]), "model must be a Network"),
    (lambda net, b: alignment.alignment_trajectory(DelayedXORCredit(**TINY), ["eprop"], n_steps=0, every=1,
                                                   n_batches=1), "n_steps must be a positive number"),
    (lambda net, b: alignment.alignment_trajectory(DelayedXORCredit(**TINY), ["eprop"], n_steps=2, every=1,
                                                   n_batches=1.5), "n_batches must be an integer"),
    (lambda net, b: alignment.alignment_trajectory(DelayedXORCredit(**TINY), ["eprop"], n_steps=2, every=1,
                                                   n_batches=1, stream="validation"), "stream must differ"),
    (lambda net, b: alignment.alignment_trajectory(net, ["eprop"], n_steps=2, every=1, n_batches=1),
     "config must be a DelayedXORCredit"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call(_net(), _batches())
