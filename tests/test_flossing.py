"""Gradient flossing: the bit tasks and their loss, the original's network, the schedule inside ``fit``."""
import math

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from rnnnotes.cells import VanillaRNN
from rnnnotes.flossing import Flossing, FlossingSchedule
from rnnnotes.losses import Objective, accuracy, masked_bce
from rnnnotes.lyapunov import lyapunov_spectrum
from rnnnotes.model import Network, Readout
from rnnnotes.params import VanillaInit
from rnnnotes.rate_experiments import GradientFlossing
from rnnnotes.tasks import Batch, TaskStream, copy_task, delayed_parity
from rnnnotes.train import FitConfig, Training, fit


def _reference_targets(bits, delay, order):
    """Parity of the bits at lags d, 2d, ..., 2^h d, step by step; None where a lag reaches before the draw."""
    T = bits.shape[0] - delay
    out = []
    for t in range(T):
        idx = [t + delay - j * delay for j in range(1, 2 ** order + 1)]
        out.append(None if min(idx) < 0 else sum(int(bits[i]) for i in idx) % 2)
    return out


@pytest.mark.parametrize("order", [1, 2])
def test_delayed_parity_targets_window_and_input(order):
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    delay, n_steps = 3, 40
    batch = delayed_parity(4, generator=g1, n_steps=n_steps, delay=delay, order=order, n_in=2, sigma=0.5)
    bits = torch.randint(0, 2, (n_steps + delay, 4, 2), generator=g2)  # the same draw
    assert torch.equal(batch.x, 0.5 * bits[delay:].float()) and batch.loss == "bce"
    start = delay * 2 ** order - 1
    assert batch.mask[:start].sum() == 0 and batch.mask[start:].all()
    for b in range(4):
        for c in range(2):
            expected = _reference_targets(bits[:, b, c], delay, order)
            assert [int(v) for v in batch.y[start:, b, c]] == expected[start:]
    causal = delayed_parity(4, generator=torch.Generator().manual_seed(5), n_steps=n_steps, delay=delay,
                            order=order, first_step="causal")
    assert int(causal.mask[:, 0].long().argmax()) == start + 1


def test_copy_task_copies_the_bit_delay_steps_back():
    batch = copy_task(3, generator=torch.Generator().manual_seed(0), n_steps=30, delay=4, first_step="causal")
    assert torch.equal(batch.y[4:], batch.x[:-4])
    assert batch.mask[:4].sum() == 0 and batch.mask[4:].all()
    original = copy_task(3, generator=torch.Generator().manual_seed(0), n_steps=30, delay=4)
    assert original.mask[3:].all() and not original.mask[:3].any()


@pytest.mark.parametrize("kwargs, name", [
    (dict(delay=-1), "delay"), (dict(delay=0), "delay must be at least 1"), (dict(order=0), "order"),
    (dict(delay=20, n_steps=30), "empty"),
    (dict(first_step="late"), "first_step"), (dict(n_in=0), "n_in")])
def test_bad_task_arguments_are_named(kwargs, name):
    args = dict(n_steps=30, delay=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        delayed_parity(2, generator=torch.Generator(), **args)


def test_masked_bce_and_accuracy_against_torch():
    g = torch.Generator().manual_seed(1)
    out = torch.randn(10, 3, 2, generator=g)
    y = torch.randint(0, 2, (10, 3, 2), generator=g).float()
    mask = torch.rand(10, 3, generator=g) > 0.3
    batch = Batch(torch.zeros(10, 3, 1), y, mask, loss="bce")
    expected = F.binary_cross_entropy_with_logits(out[mask], y[mask])
    assert torch.allclose(masked_bce(out, batch), expected)
    assert accuracy(out, batch) == pytest.approx(((out[mask] > 0) == (y[mask] > 0.5)).float().mean().item())
    with pytest.raises(ValueError, match="0, 1"):
        Batch(torch.zeros(10, 3, 1), y * 2, mask, loss="bce")


def test_vanilla_rnn_reads_out_x_and_starts_each_row_from_its_own_learned_state():
    cell = VanillaRNN(1, 8, VanillaInit(g=1.2, bias_scale=0.1), n_initial=3, seed=0)
    model = Network(cell, Readout(8, 1, seed=0))
    x = torch.ones(5, 4, 1)
    result = model(x)
    assert torch.allclose(result.out, result.hidden.v @ model.readout.w_out + model.readout.b_out)
    assert not torch.allclose(result.hidden.v, result.hidden.z)
    v0 = cell.initial_state(4).v
    assert torch.equal(v0[3], cell.x0[0].detach()) and torch.equal(v0[1], cell.x0[1].detach())
    assert cell.x0.requires_grad and cell.w_rec.diagonal().abs().sum() > 0  # self-connections kept
    assert (cell.b >= 0).all() and (cell.b < 0.1).all()
    w = VanillaRNN(1, 200, VanillaInit(g=2.0), seed=1).w_rec
    assert abs(w.std().item() * 200 ** 0.5 - 2.0) < 0.05
    q = VanillaRNN(1, 20, VanillaInit(g=1.5, orthogonal=True), seed=1).w_rec
    assert torch.allclose(q @ q.T, 1.5 ** 2 * torch.eye(20), atol=1e-5)


def test_schedule_counts_pre_and_inter_flossing_episodes():
    schedule = FlossingSchedule(pre_steps=5, inter_steps=2, inter_every=3, inter_max=2)
    due, episodes = [], 0
    for step in range(12):
        n, inter = schedule.steps_before(step, episodes)
        episodes += inter
        due.append(n)
    assert due == [5, 0, 2, 0, 0, 2, 0, 0, 0, 0, 0, 0]
    assert FlossingSchedule(n_steps=55).counted_from == 16  # the original's 10 + ceil(Tp / 10)
    with pytest.raises(ValueError, match="warmup"):
        FlossingSchedule(n_steps=10, warmup=10)
    with pytest.raises(ValueError, match="pre_steps"):
        FlossingSchedule(pre_steps=-1)


def test_pre_flossing_brings_the_flossed_exponents_to_zero():
    """Measured on 8 fresh 55-step sequences (the spectrum's finite-time spread is about 0.03 on one)."""
    cell = VanillaRNN(1, 16, VanillaInit(g=0.6), seed=2)
    model = Network(cell, Readout(16, 1, seed=2))
    readout = model.readout.w_out.detach().clone()
    inputs = TaskStream(delayed_parity, seed=0, stream="flossing", batch_size=1, n_steps=60, delay=2)
    flossing = Flossing(model, FlossingSchedule(n_exponents=3, lr=0.02), inputs, seed=0, coordinates="rate")
    x = torch.cat([inputs(10_000 + i).x[:55] for i in range(8)], dim=1)

    def spectrum():
        state_map = cell.state_map("rate")
        return lyapunov_spectrum(state_map, state_map.pack(cell.initial_state(8)), x, 3, warmup=16).detach()
    before = spectrum()
    loss, exponents = flossing.step()  # the original code's loss: the mean over the k exponents
    assert loss.item() == pytest.approx(exponents.pow(2).mean().item(), rel=1e-12)
    log = flossing.run(199)
    after = spectrum()
    assert before.max() < -0.5
    assert after.abs().max() < 0.05, after
    assert log["floss_loss"] < 0.05 * loss.item() and log["floss_steps"] == 200
    assert torch.equal(model.readout.w_out, readout)  # only W_in, W_rec and b are flossed


def test_flossing_rejects_unknown_parameter_names():
    model = Network(VanillaRNN(1, 4, seed=0), Readout(4, 1, seed=0))
    with pytest.raises(ValueError, match="schedule.names"):
        Flossing(model, FlossingSchedule(names=("cell.J",)), None)


@pytest.mark.parametrize("horizon", [6, 30])
def test_experiments_long_term_jacobian_is_the_product_of_step_jacobians(horizon):
    """The config's long-term Jacobian against the product of autograd Jacobians of its rate map (row vectors:
    ``h_t = h_{t-1} D_t``), along the same held-out sequence, also beyond the task's ``n_steps``."""
    config = GradientFlossing(n_hidden=5, n_steps=24, n_lyapunov=20, delay=2, g=1.5, seed=3)
    model = config.network().double()
    logs = config.long_term_jacobian(model, horizon)
    state_map, x = model.cell.state_map("rate"), config.spectrum_inputs(1, horizon).double()
    h, product = state_map.pack(model.cell.initial_state(1, dtype=torch.float64)).detach(), torch.eye(5).double()
    with torch.no_grad():
        for t in range(horizon):
            jacobian = torch.autograd.functional.jacobian(lambda v: state_map.step(v[None], x[t])[0], h[0])
            product = jacobian @ product
            h = state_map.step(h, x[t]).detach()
            exact = torch.linalg.svdvals(product).log()
            resolved = exact > exact[0] - math.log(1e9)  # a dense SVD loses sigma_i / sigma_1 below 1e-9 to rounding
            assert torch.allclose(logs[t][resolved], exact[resolved], rtol=0, atol=1e-6), t
    assert logs.shape == (horizon, 5) and (logs[:, :-1] >= logs[:, 1:]).all()


def test_spectrum_inputs_of_any_length_share_their_first_steps():
    config = GradientFlossing(n_steps=40, n_lyapunov=30, delay=2)
    longer = config.spectrum_inputs(3, 100)
    assert longer.shape == (100, 3, 1) and torch.equal(config.spectrum_inputs(3), longer[:30])
    whole = torch.cat([config.stream("spectrum", 1)(i).x for i in range(3)], 1)
    assert torch.equal(config.spectrum_inputs(3, 40), whole)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_hidden=4, n_exponents=6), "n_exponents must be at most n_hidden = 4"),
    (dict(n_exponents=0), "n_exponents must be a positive number"),
    (dict(n_lyapunov=10), "n_lyapunov must exceed its warm-up of 11 steps"),
    (dict(n_steps=30, n_lyapunov=55), "and be at most n_steps = 30")])
def test_flossing_config_refuses_spectra_it_cannot_take_before_training(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradientFlossing(**kwargs)


def test_a_flossing_step_refuses_inputs_shorter_than_its_spectrum():
    model = Network(VanillaRNN(1, 6, seed=0), Readout(6, 1, seed=0))
    schedule = FlossingSchedule(n_exponents=2, pre_steps=1, n_steps=30, names=("cell.w_rec",))
    short = TaskStream(delayed_parity, seed=0, batch_size=1, n_steps=20, delay=2)
    with pytest.raises(ValueError, match="the flossing inputs have 20 steps, fewer than schedule.n_steps = 30"):
        Flossing(model, schedule, short).step()


def test_experiments_floss_moves_only_the_flossed_weights_and_lowers_the_loss():
    config = GradientFlossing(n_hidden=8, n_steps=30, n_lyapunov=25, n_exponents=2, g=0.6, seed=1)
    model = config.network()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    exponents = config.spectrum(model, 2, n_sequences=3)
    log = config.floss(model, 30, lr=0.02)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"cell.w_in", "cell.w_rec", "cell.b"}
    assert len(log) == 30 and log[-1] < 0.2 * log[0]
    after = config.spectrum(model, 2, n_sequences=3)
    assert after.abs().max() < exponents.abs().max() / 3 and not after.requires_grad


class _Crash:
    def __init__(self, stream, at):
        self.stream, self.at = stream, at

    def __call__(self, step):
        if step == self.at:
            raise KeyboardInterrupt
        return self.stream(step)


def test_flossing_in_fit_logs_its_episodes_and_resumes_bitwise(tmp_path):
    config = GradientFlossing(n_hidden=8, n_steps=20, delay=2, batch_size=4, n_iterations=8, pre_steps=3,
                              inter_steps=2, inter_every=3, inter_max=2, n_exponents=2, n_lyapunov=15,
                              n_validation=16)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reference = fit(config.build("cpu"), run_dir=tmp_path / "a")
    rows = reference.history
    assert rows["floss_steps"].dropna().tolist() == [3, 5, 7]  # pre at step 1, inter before steps 3 and 6
    assert rows.loc[rows["step"] == 1, "floss_loss_first"].notna().all()
    crashed = config.build("cpu")
    crashed = crashed._replace(task=_Crash(crashed.task, 5), config=FitConfig(
        steps=8, checkpoint_every=2, clip_norm=config.clip_norm, progress=False))
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, run_dir=tmp_path / "b")
    resumed = config.build("cpu")
    fit(resumed, run_dir=tmp_path / "b")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "metrics.csv"),
                                  pd.read_csv(tmp_path / "b" / "metrics.csv"))
    a, b = torch.load(tmp_path / "a" / "model.pt"), torch.load(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_clip_norm_clips_each_tensor_separately():
    model = Network(VanillaRNN(1, 6, seed=0), Readout(6, 1, seed=0))
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    task = TaskStream(copy_task, seed=0, batch_size=4, n_steps=12, delay=2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    fit(Training(model, task, Objective(), opt, FitConfig(steps=1, clip_norm=1e-3, progress=False)))
    changes = {k: (p.detach() - before[k]).norm().item() for k, p in model.named_parameters()}
    assert all(c <= 1e-3 * (1 + 1e-5) for c in changes.values())
    assert sum(c > 0.9e-3 for c in changes.values()) >= 3  # clipped, not zeroed: several tensors hit the bound


def test_flossing_combines_with_a_credit_rule_and_a_spiking_cell():
    """e-prop on an ALIF network, flossed (surrogate spectrum) before its first step: both act, nothing breaks."""
    from rnnnotes import credit
    config = GradientFlossing(cell="alif", n_hidden=6, n_steps=16, delay=2, batch_size=2, n_iterations=2,
                              pre_steps=2, n_exponents=2, n_lyapunov=14, n_validation=4)
    training = config.build("cpu")
    w_rec = training.model.cell.w_rec.detach().clone()
    result = fit(training._replace(rule=credit.make_rule("eprop", training.model.cell)))
    assert result.status == "finished" and result.history["floss_steps"].dropna().tolist() == [2]
    assert result.history["floss_loss"].notna().any() and not torch.equal(training.model.cell.w_rec, w_rec)
    assert {"eval_lambda_1", "eval_lambda_k", "eval_accuracy"} <= set(result.history.columns)
