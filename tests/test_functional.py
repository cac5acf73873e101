"""The functional core under torch.func: HVPs three ways, vmap, the flat state map and its Jacobian."""
import math

import pytest
import torch
from torch.func import functional_call, grad, jacrev, jvp, vmap

from rnnnotes import credit
from rnnnotes.cells import ALIF, LIF, RateRNN
from rnnnotes.functional import alif_step, lif_step, pseudo_derivative, rate_step, spike
from rnnnotes.model import Network, Readout
from rnnnotes.params import ALIFParams, LIFParams, RateParams

TOL = dict(rtol=1e-10, atol=1e-10)


def _spiking_input(T=30, B=3, n_in=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, n_in, generator=g, dtype=torch.float64) * 0.08)


NETWORKS = {  # each <= 50 parameters
    "rate": lambda: Network(RateRNN(2, 4, tau=5.0, seed=1), Readout(4, 2, seed=1)),
    "lif": lambda: Network(LIF(2, 4, thr=0.02, n_ref=1, seed=2), Readout(4, 2, tau_out=5.0, seed=2)),
    "alif": lambda: Network(ALIF(2, 2, 2, thr=0.02, n_ref=1, tau_a=50.0, seed=3), Readout(4, 2, tau_out=5.0, seed=3)),
}


def _loss_and_params(kind):
    net = NETWORKS[kind]().double()
    with torch.no_grad():  # strong enough input weights that the spiking cells spike and sit near threshold
        net.cell.w_in.mul_(3.0)
    x = _spiking_input() if kind != "rate" else torch.randn(12, 3, 2, dtype=torch.float64)
    target = torch.randn(x.shape[0], x.shape[1], 2, dtype=torch.float64)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}

    def loss(p):
        out = functional_call(net, p, (x,)).out
        return ((out - target) ** 2).mean()
    return net, loss, params


def _flat(d):
    return torch.cat([t.reshape(-1) for t in d.values()])


@pytest.mark.parametrize("kind", ["rate", "lif", "alif"])
def test_forward_over_reverse_hvp_equals_double_backward_and_dense_hessian(kind):
    net, loss, params = _loss_and_params(kind)
    n_params = sum(p.numel() for p in params.values())
    assert n_params <= 50
    hidden = functional_call(net, params, (_spiking_input(),)).hidden
    if kind != "rate":  # the surrogate is active somewhere, so the Hessian is not trivially zero
        assert hidden.z.sum() > 0
    g = torch.Generator().manual_seed(5)
    v = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in params.items()}
    _, hvp_fwd = jvp(grad(loss), (params,), (v,))

    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    grads = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True)
    hvp_rev = torch.autograd.grad(grads, list(leaves.values()), grad_outputs=list(v.values()))

    shapes = {k: p.shape for k, p in params.items()}

    def flat_loss(theta):
        parts, i = {}, 0
        for k, s in shapes.items():
            parts[k] = theta[i:i + math.prod(s)].view(s)
            i += math.prod(s)
        return loss(parts)
    dense = torch.autograd.functional.hessian(flat_loss, _flat(params))
    expected = dense @ _flat(v)
    assert expected.abs().max() > 1e-6, "a vanishing Hessian would make the comparison empty"
    torch.testing.assert_close(_flat(hvp_fwd), expected, **TOL)
    torch.testing.assert_close(torch.cat([h.reshape(-1) for h in hvp_rev]), expected, **TOL)


def test_spike_jvp_and_vmap_use_the_pseudo_derivative():
    v = torch.tensor([-1.5, -0.3, 0.2, 0.7], dtype=torch.float64)
    tangent = torch.tensor([1.0, 2.0, -1.0, 3.0], dtype=torch.float64)
    out, out_dot = jvp(lambda u: spike(u, 0.5), (v,), (tangent,))
    torch.testing.assert_close(out, (v > 0).double())
    torch.testing.assert_close(out_dot, tangent * 0.5 * torch.clamp(1 - v.abs(), min=0))
    batched = vmap(grad(lambda u: spike(u, 0.5).sum()))(v.view(2, 2))
    torch.testing.assert_close(batched.view(-1), pseudo_derivative(v, 0.5))


def test_random_feedback_matmul_under_torch_func():
    cell = RateRNN(2, 3, seed=0).double()
    rule = credit.make_rule("eprop", cell, feedback="random", n_out=2, seed=4)
    psp = torch.randn(5, 3, dtype=torch.float64)
    w_out = torch.randn(3, 2, dtype=torch.float64)
    d_psp = grad(lambda p: rule.readout(p, w_out).sum())(psp)
    torch.testing.assert_close(d_psp, torch.ones(5, 2, dtype=torch.float64) @ rule.feedback.double().T)
    d_w = grad(lambda w: rule.readout(psp, w).sum())(w_out)
    torch.testing.assert_close(d_w, psp.T @ torch.ones(5, 2, dtype=torch.float64))
    t_psp, t_w = torch.randn_like(psp), torch.randn_like(w_out)
    _, tangent = jvp(lambda p, w: rule.readout(p, w), (psp, w_out), (t_psp, t_w))
    torch.testing.assert_close(tangent, t_psp @ w_out + psp @ t_w)
    stacked = vmap(lambda p: rule.readout(p, w_out))(psp.view(5, 1, 3))
    torch.testing.assert_close(stacked.view(5, 2), psp @ w_out)


def test_vmap_over_a_stack_of_recurrent_weights_equals_a_loop():
    cell = RateRNN(2, 4, seed=0).double()
    x = torch.randn(6, 2, 2, dtype=torch.float64)
    stack = torch.randn(3, 4, 4, dtype=torch.float64) * 0.5
    batched = vmap(lambda w: functional_call(cell, {"w_in": cell.w_in, "w_rec": w}, (x,)).z)(stack)
    for k in range(3):
        torch.testing.assert_close(batched[k], functional_call(cell, {"w_in": cell.w_in, "w_rec": stack[k]}, (x,)).z)


def test_step_functions_are_the_modules_steps():
    x = _spiking_input(T=1, B=4)[0]
    for cell, step, params in ((ALIF(2, 2, 2, seed=0).double(), alif_step, None),
                               (LIF(2, 4, seed=0).double(), lif_step, LIFParams()),
                               (RateRNN(2, 4, seed=0).double(), rate_step, RateParams())):
        state = cell.initial_state(4, dtype=torch.float64)
        state = state._replace(v=torch.rand(4, 4, dtype=torch.float64) * 0.03)
        current = x @ cell.w_in
        params = params or cell.step_params()
        out_fn, new_fn = step(current, state, params, cell.step_weights())
        out, new = cell.step(current, state)
        assert type(out) is type(out_fn) and type(new) is type(new_fn)
        for a, b in zip((*out, *new), (*out_fn, *new_fn)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_lif_step_keeps_b_and_a_fixed_threshold():
    cell = LIF(2, 3, thr=0.02, seed=0).double()
    state = cell.initial_state(2, dtype=torch.float64)
    state = state._replace(b=torch.full((2, 3), 5.0, dtype=torch.float64), z=torch.ones(2, 3, dtype=torch.float64))
    out, new = cell.step(torch.zeros(2, 3, dtype=torch.float64), state)
    assert torch.all(out.threshold == 0.02) and torch.equal(new.b, state.b)


def test_rate_state_map_jacobian_is_analytic():
    cell = RateRNN(3, 5, tau=4.0, seed=0).double()
    sm = cell.state_map()
    h = torch.randn(1, 5, dtype=torch.float64)
    x = torch.randn(1, 3, dtype=torch.float64)
    J = jacrev(lambda u: sm.step(u, x))(h)[0, :, 0, :]  # J[j, i] = d h_t[j] / d h_{t-1}[i]
    alpha = math.exp(-1 / 4)
    w = cell.recurrent_weights().detach()
    phi_prime = 1 - torch.tanh(h[0]) ** 2
    expected = alpha * torch.eye(5, dtype=torch.float64) + (1 - alpha) * (phi_prime[:, None] * w).T
    torch.testing.assert_close(J, expected, rtol=1e-12, atol=1e-12)
    assert sm.differentiable.all()


@pytest.mark.parametrize("make", [lambda: ALIF(2, 2, 2, n_ref=2, seed=1), lambda: LIF(2, 4, n_ref=2, seed=1)])
def test_spiking_state_map_roundtrip_step_and_surrogate_jacobian(make):
    cell = make().double()
    sm = cell.state_map()
    state = cell.initial_state(1, dtype=torch.float64)
    state = state._replace(v=torch.tensor([[0.005, 0.012, 0.02, -0.01]], dtype=torch.float64),
                           b=torch.rand(1, 4, dtype=torch.float64) * 0.01 if isinstance(cell, ALIF) else state.b,
                           ref=torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=torch.float64))
    h = sm.pack(state)
    assert h.shape == (1, 16)
    for a, b in zip(sm.unpack(h), state):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    x = torch.rand(1, 2, dtype=torch.float64) * 0.05
    expected = cell.step(x @ cell.w_in, state)[1]
    torch.testing.assert_close(sm.step(h, x), sm.pack(expected), rtol=0, atol=0)
    J = jacrev(lambda u: sm.step(u, x))(h)[0, :, 0, :]
    ref = slice(12, 16)
    assert torch.all(J[:, ref] == 0) and torch.all(J[ref, :] == 0), "the refractory counter carries no gradient"
    new = cell.step(x @ cell.w_in, state)[0]
    A = new.threshold[0]
    dz_dv = torch.diagonal(J[4:8, 0:4])
    expected_dz = pseudo_derivative((state.v[0] - A) / A, cell.params.gamma) / A * (state.ref[0] <= 0)
    torch.testing.assert_close(dz_dv, expected_dz, rtol=1e-12, atol=1e-12)
    assert sm.differentiable[ref].sum() == 0
    assert bool(sm.differentiable[8:12].all()) == isinstance(cell, ALIF)


def test_state_map_refuses_delays():
    with pytest.raises(ValueError, match="n_delay"):
        ALIF(2, 2, 2, n_delay=3).state_map()


def test_params_objects_presets_and_keywords():
    p = ALIFParams.bellec2018_store_recall()
    assert (p.tau_a, p.beta, p.n_ref, p.n_delay) == (1200.0, 1.7, 3, 10)
    cell = ALIF(3, 2, 2, p, seed=0)
    assert cell.params is p and cell.n_delay == 10
    assert cell.beta.tolist() == [0.0, 0.0, 1.7, 1.7]  # exactly: the buffer is float64
    assert ALIF(3, 2, 2, tau_m=30.0).params.tau_m == 30.0
    assert ALIF(3, 2, 2, p, n_ref=1).params.n_ref == 1 and ALIF(3, 2, 2, p, n_ref=1).params.tau_a == 1200.0
    assert RateRNN(2, 3, RateParams.modprop()).params.activation == "relu"
    assert math.isclose(RateParams(tau=10.0).alpha, math.exp(-0.1))


@pytest.mark.parametrize("make, name", [
    (lambda: ALIFParams(tau_m=-5.0), "tau_m"),
    (lambda: ALIFParams(tau_a=-1.0), "tau_a"),
    (lambda: ALIFParams(beta=-0.1), "beta"),
    (lambda: LIFParams(dt=-1.0), "dt"),
    (lambda: RateParams(tau=-2.0), "tau"),
    (lambda: RateParams(activation="sigmoid"), "activation"),
    (lambda: ALIF(2, 2, 2, tau_x=3.0), "tau_x"),
    (lambda: ALIF(2, 2, 2, RateParams()), "params"),
])
def test_bad_params_are_named(make, name):
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize("make", [lambda: ALIF(2, 2, 2), lambda: LIF(2, 4), lambda: RateRNN(2, 4)])
def test_a_state_of_the_wrong_shape_is_named(make):
    cell = make()
    state = cell.initial_state(3)
    with pytest.raises(ValueError, match="state.v"):
        cell.step(torch.zeros(3, 4), state._replace(v=torch.zeros(3, 5)))
    with pytest.raises(ValueError, match="input_current"):
        cell.step(torch.zeros(3, 2), state)
    with pytest.raises(ValueError, match="state must be"):
        cell.step(torch.zeros(3, 4), tuple(state))


@pytest.mark.parametrize("make", [lambda: ALIF(2, 2, 2), lambda: LIF(2, 4), lambda: RateRNN(2, 4)])
def test_a_state_of_another_dtype_than_the_current_is_named(make):
    cell = make()
    with pytest.raises(ValueError, match="state.v must have dtype torch.float32, got torch.float64"):
        cell.step(torch.zeros(3, 4), cell.initial_state(3, dtype=torch.float64))
