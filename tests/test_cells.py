"""Cells against the equations: an independent NumPy re-simulation, the pseudo-derivative, finite differences."""
import math

import numpy as np
import pytest
import torch

from rnnnotes.cells import ALIF, LIF, RateRNN, SpikingState, spike
from conftest import autograd_gains


def numpy_alif(x, w_in, w_rec, delay_in, delay_rec, beta, *, tau_m, tau_a, thr, n_ref, dt, n_delay):
    """LSNN step order written out from the equations, one synapse and one time step at a time."""
    T, B, _ = x.shape
    n = w_rec.shape[0]
    w_rec = w_rec * (1 - np.eye(n))
    alpha, rho = math.exp(-dt / tau_m), math.exp(-dt / tau_a)
    v, z, b = np.zeros((B, n)), np.zeros((B, n)), np.zeros((B, n))
    last_spikes = np.zeros((B, n, max(n_ref, 1)))  # the most recent n_ref spikes
    future = np.zeros((B, n, n_delay))  # slot d: current arriving d steps from now
    zs, vs, thrs = [], [], []
    for t in range(T):
        for i in range(w_in.shape[0]):
            for j in range(n):
                future[:, j, delay_in[i, j]] += x[t, :, i] * w_in[i, j]
        for i in range(n):
            for j in range(n):
                future[:, j, delay_rec[i, j]] += z[:, i] * w_rec[i, j]
        b = rho * b + (1 - rho) * z
        A = thr + beta * b
        current = future[:, :, 0].copy()
        future = np.concatenate([future[:, :, 1:], np.zeros((B, n, 1))], axis=2)
        v_new = alpha * v + (1 - alpha) * current - z * A * dt
        z_new = ((v - A) / A > 0).astype(float)
        if n_ref > 0:
            z_new[last_spikes[:, :, -n_ref:].max(axis=2) > 0] = 0.0
        z_new = z_new / dt
        last_spikes = np.concatenate([last_spikes[:, :, 1:], z_new[:, :, None]], axis=2)
        v, z = v_new, z_new
        zs.append(z), vs.append(v), thrs.append(A)
    return np.array(zs), np.array(vs), np.array(thrs)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("n_delay", [1, 4])
def test_alif_matches_independent_numpy_simulation(n_delay, fast):
    torch.manual_seed(0)
    params = dict(tau_m=20.0, tau_a=200.0, thr=0.01, n_ref=3, dt=1.0)
    cell = ALIF(4, 3, 3, beta=1.6, gamma=0.3, n_delay=n_delay, seed=3, **params).double()
    with torch.no_grad():
        cell.w_in.mul_(0.3)
        cell.w_rec.mul_(0.05)
    x = (torch.rand(250, 2, 4, dtype=torch.float64) < 0.15).double()
    with torch.no_grad():
        out = cell(x, fast=fast)
    z, v, A = numpy_alif(x.numpy(), cell.w_in.detach().numpy(), cell.w_rec.detach().numpy(),
                         cell.delay_in.numpy(), cell.delay_rec.numpy(), np.array([0.0] * 3 + [1.6] * 3),
                         n_delay=n_delay, **params)
    assert z.sum() > 20, "the trace should contain spikes"
    # refractoriness is exercised: some step after a spike would have crossed threshold without it
    refractory_blocked = ((v[:-1] - A[1:]) / A[1:] > 0) & (z[1:] == 0)
    assert refractory_blocked.any()
    np.testing.assert_array_equal(out.z.numpy(), z)
    np.testing.assert_allclose(out.v.numpy(), v, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out.threshold.numpy(), A, atol=1e-12, rtol=0)


def test_lif_is_alif_without_adaptation():
    x = torch.rand(100, 3, 2) * 0.1
    lif = LIF(2, 5, thr=0.01, n_ref=2, seed=1)
    alif = ALIF(2, 5, 0, thr=0.01, n_ref=2, seed=1)
    assert torch.equal(lif(x).z, alif(x).z)
    assert torch.all(lif(x).threshold == 0.01)


def test_step_is_one_exact_recurrence():
    cell = ALIF(3, 2, 2, seed=0).double()
    state = cell.initial_state(4, dtype=torch.float64)
    state = state._replace(v=torch.rand(4, 4, dtype=torch.float64) * 0.03,
                           z=(torch.rand(4, 4) < 0.5).double(), b=torch.rand(4, 4, dtype=torch.float64))
    i_t = torch.rand(4, 4, dtype=torch.float64) * 0.01
    (z, v, A), new = cell.step(i_t, state)
    b = cell.params.rho * state.b + (1 - cell.params.rho) * state.z
    A_ref = 0.01 + cell.beta.double() * b
    w_rec = cell.w_rec.detach() * (1 - torch.eye(4, dtype=torch.float64))
    v_ref = cell.alpha * state.v + (1 - cell.alpha) * (i_t + state.z @ w_rec) - state.z * A_ref
    torch.testing.assert_close(new.b, b, rtol=0, atol=0)
    torch.testing.assert_close(A, A_ref, rtol=0, atol=0)
    torch.testing.assert_close(v, v_ref, rtol=0, atol=1e-15)
    torch.testing.assert_close(z, ((state.v - A_ref) / A_ref > 0).double(), rtol=0, atol=0)


@pytest.mark.parametrize("make", [lambda: ALIF(3, 3, 3, tau_a=50.0, thr=0.02, n_ref=2, n_delay=4, seed=2),
                                  lambda: RateRNN(3, 5, seed=2)])
@pytest.mark.parametrize("fast", [False, True])
def test_final_state_continues_the_sequence(make, fast):
    """Two halves, the second from the first's final state, are the whole sequence (no input in flight on a
    delayed synapse at the cut: the first half ends with silent input), on the plain path and on the fused path,
    whose final state is read off its outputs."""
    cell = make().double()
    x = (torch.rand(40, 2, 3, generator=torch.Generator().manual_seed(0)) < 0.3).double()
    x[16:20] = 0.0
    whole, last = cell(x, final=True, fast=fast)
    first, state = cell(x[:20], final=True, fast=fast)
    second, end = cell(x[20:], state, final=True, fast=fast)
    for a, b, c in zip(whole, first, second):
        assert torch.equal(a, torch.cat([b, c]))
    assert all(torch.equal(a, b) for a, b in zip(last, end))
    torch.testing.assert_close(whole.z, cell(x, fast=False).z, rtol=0, atol=1e-12)
    assert whole.z.sum() > 0
    with pytest.raises(ValueError, match="final"):
        cell(x, checkpoint=10, final=True)


@pytest.mark.parametrize("kind", ["alif", "lif"])
def test_fused_final_state_is_the_plain_loops(kind):
    """From a random state with refractory neurons and a spike history, over sequences shorter and longer than the
    delays and the refractory period: the fused run's final state is the one the plain loop carries."""
    g = torch.Generator().manual_seed(3)
    cell = (ALIF(3, 3, 3, tau_a=50.0, thr=0.02, n_ref=3, n_delay=5, seed=2) if kind == "alif"
            else LIF(3, 6, thr=0.02, n_ref=3, n_delay=5, seed=2)).double()
    state = cell.initial_state(4, dtype=torch.float64)
    state = state._replace(v=torch.rand(4, 6, generator=g, dtype=torch.float64) * 0.05,
                           z=(torch.rand(4, 6, generator=g) < 0.5).double(),
                           b=torch.rand(4, 6, generator=g, dtype=torch.float64),
                           ref=torch.randint(0, 6, (4, 6), generator=g).double(),
                           history=(torch.rand(4, 24, generator=g) < 0.5).double())
    for steps in (1, 3, 12):
        x = (torch.rand(steps, 4, 3, generator=g) < 0.4).double()
        plain, fused_ = (cell(x, state, final=True, fast=fast) for fast in (False, True))
        assert type(fused_[0].z.grad_fn).__name__ == "SpikingSequenceBackward"
        for name, a, b in zip(SpikingState._fields, plain[1], fused_[1]):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-12, msg=name)
    assert plain[0].z.sum() > 0 and (plain[1].ref > 0).any() and (plain[1].ref == 0).any()


def test_pseudo_derivative_formula():
    cell = ALIF(1, 2, 2, gamma=0.3, n_ref=2).double()
    state = cell.initial_state(50, dtype=torch.float64)
    v0 = torch.linspace(-0.01, 0.04, 50 * 4, dtype=torch.float64).view(50, 4).requires_grad_()
    ref = torch.zeros(50, 4, dtype=torch.float64)
    ref[::7] = 1.0  # some neurons refractory
    (z, _, A), _ = cell.step(torch.zeros(50, 4, dtype=torch.float64), state._replace(v=v0, ref=ref))
    z.sum().backward()
    v_scaled = (v0.detach() - A) / A
    expected = 0.3 * torch.clamp(1 - v_scaled.abs(), min=0) / A
    expected[ref > 0] = 0.0
    torch.testing.assert_close(v0.grad, expected, rtol=1e-12, atol=0)
    assert (v0.grad[ref == 0] > 0).any() and (v0.grad[v_scaled.abs() >= 1] == 0).all()


def test_spike_backward_is_the_pseudo_derivative():
    v = torch.tensor([-0.9, -0.3, 0.2, 0.7], dtype=torch.float64, requires_grad=True)
    spike(v, 0.5).sum().backward()
    torch.testing.assert_close(v.grad, 0.5 * (1 - v.detach().abs()))


def test_rate_rnn_gradcheck_against_finite_differences():
    for activation in ("tanh", "relu"):
        cell = RateRNN(3, 5, activation=activation, tau=10.0, seed=2).double()
        x = torch.randn(12, 2, 3, dtype=torch.float64)

        def loss(w_in, w_rec):
            return torch.func.functional_call(cell, {"w_in": w_in, "w_rec": w_rec}, (x,)).z.pow(2).sum()

        w_in = cell.w_in.detach().clone().requires_grad_()
        w_rec = cell.w_rec.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(loss, (w_in, w_rec), eps=1e-6, atol=1e-7)


def test_rate_rnn_recurrence():
    cell = RateRNN(2, 3, tau=5.0).double()
    x = torch.randn(4, 1, 2, dtype=torch.float64)
    out = cell(x)
    alpha = math.exp(-1 / 5)
    v, z = torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)
    for t in range(4):
        v = alpha * v + (1 - alpha) * (x[t] @ cell.w_in + z @ cell.recurrent_weights())
        z = torch.tanh(v)
        torch.testing.assert_close(out.z[t], z)


@pytest.mark.parametrize("make", [lambda: ALIF(3, 2, 3, n_delay=3), lambda: LIF(3, 5), lambda: RateRNN(3, 5)])
def test_batched_equals_unbatched_and_no_autapses(make):
    cell = make()
    x = torch.rand(30, 4, 3) * 0.2
    full = cell(x).z
    for k in range(4):
        torch.testing.assert_close(cell(x[:, k:k + 1]).z, full[:, k:k + 1])
    assert torch.all(cell.w_rec.diagonal() == 0)
    full.sum().backward()
    assert torch.all(cell.w_rec.grad.diagonal() == 0)


def test_float32_and_float64():
    for dtype in (torch.float32, torch.float64):
        cell = ALIF(2, 2, 2).to(dtype)
        out = cell(torch.rand(10, 1, 2, dtype=dtype))
        assert out.z.dtype == out.v.dtype == out.threshold.dtype == dtype


@pytest.mark.parametrize("make, name", [
    (lambda: ALIF(2, 2, 2, tau_m=0), "tau_m"),
    (lambda: ALIF(2, 2, 2, tau_a=-1), "tau_a"),
    (lambda: ALIF(2, 2, 2, dt=0), "dt"),
    (lambda: ALIF(2, 2, 2, thr=0), "thr"),
    (lambda: ALIF(0, 2, 2), "n_in"),
    (lambda: ALIF(2, -1, 2), "n_regular"),
    (lambda: ALIF(2, 2, 2, n_ref=-1), "n_ref"),
    (lambda: ALIF(2, 2, 2, n_delay=0), "n_delay"),
    (lambda: LIF(2, 0), "n"),
    (lambda: RateRNN(2, 3, tau=0), "tau"),
    (lambda: RateRNN(2, 3, activation="sigmoid"), "activation"),
    (lambda: ALIF(2.5, 2, 2), "n_in"),
    (lambda: ALIF(2, 2.5, 2), "n_regular"),
    (lambda: ALIF(2, 2, "3"), "n_adaptive"),
    (lambda: LIF(2, 2.5), "n"),
    (lambda: ALIF(2, 2, 2, thr=float("inf")), "thr"),
    (lambda: ALIF(2, 2, 2, tau_a=float("inf")), "tau_a"),
    (lambda: RateRNN(2, 3, tau=float("inf")), "tau"),
    (lambda: ALIF(2, 2, 2).initial_state(-1), "batch"),
    (lambda: LIF(2, 3).initial_state(2.5), "batch"),
])
def test_bad_parameters_are_named(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_mismatched_input_shape_is_named():
    with pytest.raises(ValueError, match=r"x must have shape \(\*, \*, 3\)"):
        ALIF(3, 2, 2)(torch.zeros(5, 2, 4))
    with pytest.raises(ValueError, match="x must have shape"):
        RateRNN(3, 2)(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="x must have the weights' dtype torch.float32, got torch.float64"):
        ALIF(3, 2, 2)(torch.zeros(5, 2, 3, dtype=torch.float64))


def _carried(cell, batch=3):
    """A carried state with neurons still refractory (``ref`` 1 to 3), potentials near threshold and spikes."""
    g = torch.Generator().manual_seed(4)
    state = cell.initial_state(batch, dtype=torch.float64)
    return state._replace(v=1.0 + 0.4 * torch.rand(batch, cell.n, generator=g, dtype=torch.float64),
                          z=(torch.rand(batch, cell.n, generator=g) < 0.5).double(),
                          b=torch.rand(batch, cell.n, generator=g, dtype=torch.float64) * 0.2,
                          ref=torch.randint(0, 4, (batch, cell.n), generator=g).double())


@pytest.mark.parametrize("make", [lambda: LIF(2, 4, thr=1.0, n_ref=3, seed=1),
                                  lambda: ALIF(2, 2, 2, thr=1.0, n_ref=2, beta=0.5, dt=0.5, seed=1)])
@pytest.mark.parametrize("fast", [False, True])
def test_gains_are_autograd_through_the_step_from_a_carried_state(make, fast):
    """``gains(hidden, state)`` is dz_k/dv_{k-1} by autograd through ``cell.step`` from a carried state: v_{-1} is
    the state's potential, and the carried refractory counter zeroes the first steps."""
    cell = make().double()
    state = _carried(cell)
    x = torch.rand(12, 3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = cell(x, state, fast=fast)
    gains, lag = cell.gains(out, state)
    expected = autograd_gains(cell, x, state)
    assert lag == 1 and out.z.sum() > 0 and (expected[0][state.ref > 0] == 0).all() and (expected[0] > 0).any()
    torch.testing.assert_close(gains, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("make", [lambda: ALIF(3, 2, 2), lambda: LIF(3, 4), lambda: RateRNN(3, 4)])
@pytest.mark.parametrize("kwargs", [dict(fast=False), dict(fast=True), dict(final=True), dict(checkpoint=2)])
def test_an_empty_sequence_is_refused(make, kwargs):
    with pytest.raises(ValueError, match="x must have at least one time step"):
        make()(torch.zeros(0, 2, 3), **kwargs)


@pytest.mark.parametrize("make", [lambda: ALIF(3, 2, 2, n_delay=3), lambda: LIF(3, 4), lambda: RateRNN(3, 4)])
@pytest.mark.parametrize("fast", [False, True])
def test_a_state_that_does_not_fit_the_call_is_named(make, fast):
    cell = make()
    x = torch.rand(5, 2, 3)
    state = cell.initial_state(2)
    bad = [(cell.initial_state(3), r"state.v must have shape \(2, 4\)"),
           (state._replace(z=torch.zeros(2, 5)), r"state.z must have shape \(2, 4\)"),
           (tuple(state), "state must be a"),
           (cell.initial_state(2, dtype=torch.float64), "state.v must have dtype torch.float32")]
    if cell.n_delay > 1:
        bad.append((state._replace(history=torch.zeros(2, 4)), r"state.history must have shape \(2, 8\)"))
    for st, message in bad:
        with pytest.raises(ValueError, match=message):
            cell(x, st, fast=fast)
