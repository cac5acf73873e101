"""Credit rules against mathematics: a hand-written online e-prop, BPTT limits, the MDGL hop, ModProp limits."""
import pytest
import torch

from rnnnotes import credit
from rnnnotes.cells import ALIF, LIF, RateRNN
from rnnnotes.model import Carry, Network, Readout, readout_matmul
from conftest import autograd_gains



@pytest.fixture(autouse=True)
def float64():
    """These checks compare gradients to 1e-10; run them in double precision and restore the default after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def online_eprop(cell, readout, x, target, feedback):
    """e-prop written out from its equations (Bellec et al. 2020) for the LSNN step order, forward in time.

    Per synapse i -> j the eligibility vectors E^v, E^b, E^z are the derivatives of the neuron's own voltage,
    adaptation and spike with respect to W_ij, with the presynaptic spikes held fixed. The loss is
    E = 1/2 sum_t ||y_t - y*_t||^2 with y_t = psp_t W_out + b and psp the kappa-filtered spikes; the gradient is
    sum_t sum_k B_jk (y_tk - y*_tk) F_kappa(E^z)_t with the learning signal sent through B.
    """
    T, B, _ = x.shape
    n = cell.n
    w_in, w_rec = cell.w_in.detach(), cell.recurrent_weights().detach()
    p = cell.params
    alpha, dt, thr, gamma = p.alpha, p.dt, p.thr, p.gamma
    rho, beta = (p.rho, cell.beta.double()) if hasattr(cell, "beta") else (0.0, torch.zeros(n))  # LIF: no adaptation
    kappa, w_out, b_out = readout.kappa, readout.w_out.detach(), readout.b_out.detach()
    v, z, b, psp = (torch.zeros(B, n) for _ in range(4))
    ref = torch.zeros(B, n)
    traces = {}
    for name, n_pre in (("in", x.shape[2]), ("rec", n)):
        traces[name] = {k: torch.zeros(B, n_pre, n) for k in ("v", "b", "z", "zbar")}
    grads = {"in": torch.zeros_like(w_in), "rec": torch.zeros_like(w_rec)}
    for t in range(T):
        pre = {"in": x[t], "rec": z}
        b_new = rho * b + (1 - rho) * z
        A = thr + beta * b_new
        v_scaled = (v - A) / A
        refractory = ref > 0
        psi = gamma * torch.clamp(1 - v_scaled.abs(), min=0) / dt * (~refractory)
        z_new = (v_scaled > 0).double() * (~refractory) / dt
        v_new = alpha * v + (1 - alpha) * (x[t] @ w_in + z @ w_rec) - z * A * dt
        for name, e in traces.items():
            e_b = rho * e["b"] + (1 - rho) * e["z"]
            e_A = beta * e_b
            e_z = psi[:, None, :] * (e["v"] / A[:, None, :] - (v / A ** 2)[:, None, :] * e_A)
            e_v = alpha * e["v"] + (1 - alpha) * pre[name][:, :, None] - dt * (e["z"] * A[:, None, :]
                                                                             + z[:, None, :] * e_A)
            e.update(v=e_v, b=e_b, z=e_z, zbar=kappa * e["zbar"] + (1 - kappa) * e_z)
        ref = torch.where(z_new > 0, torch.full_like(ref, cell.params.n_ref), (ref - 1).clamp(min=0))
        v, z, b = v_new, z_new, b_new
        psp = kappa * psp + (1 - kappa) * z
        error = psp @ w_out + b_out - target[t]
        signal = error @ feedback.T  # (B, n): learning signal per neuron
        for name, e in traces.items():
            grads[name] += (signal[:, None, :] * e["zbar"]).sum(0)
    return grads


def _network(kind, **kwargs):
    torch.manual_seed(1)
    if kind == "lif":
        cell = LIF(3, 7, thr=0.02, n_ref=2, seed=3, **kwargs)
    else:
        cell = ALIF(3, 3, 4, thr=0.02, beta=1.2, tau_a=50.0, n_ref=2, seed=3, **kwargs)
    net = Network(cell, Readout(7, 2, tau_out=10.0, seed=4)).double()
    with torch.no_grad():
        net.cell.w_in.mul_(0.6)
        net.cell.w_rec.mul_(0.5)
    return net


@pytest.mark.parametrize("kind", ["lif", "alif"])
@pytest.mark.parametrize("feedback", ["symmetric", "random"])
def test_eprop_mechanism_equals_hand_written_online_eprop(kind, feedback):
    net = _network(kind)
    x = (torch.rand(120, 4, 3, generator=torch.Generator().manual_seed(0)) < 0.3).double()
    target = torch.randn(120, 4, 2, generator=torch.Generator().manual_seed(1))
    rule = credit.make_rule("eprop", net.cell, feedback=feedback, n_out=2, seed=5)
    out = net(x, rule=rule).out
    assert out.detach().ne(0).any() and net(x).hidden.z.sum() > 30, "the network should spike"
    (0.5 * (out - target).pow(2).sum()).backward()
    B = net.readout.w_out.detach() if feedback == "symmetric" else rule.feedback
    expected = online_eprop(net.cell, net.readout, x, target, B)
    torch.testing.assert_close(net.cell.w_in.grad, expected["in"], rtol=1e-5, atol=1e-8)
    rec_grad = net.cell.w_rec.grad * (1 - torch.eye(7))
    torch.testing.assert_close(rec_grad, expected["rec"] * (1 - torch.eye(7)), rtol=1e-5, atol=1e-8)


def _grads(net, x, rule, loss=lambda out: out.pow(2).sum()):
    net.zero_grad()
    out = net(x, rule=rule).out
    loss(out).backward()
    return [p.grad.clone() for p in net.parameters()], out.detach()


def test_bptt_is_plain_autograd_and_eprop_is_exact_without_recurrence():
    net = _network("alif")
    x = (torch.rand(60, 2, 3) < 0.3).double()
    plain, out = _grads(net, x, None)
    bptt, out_bptt = _grads(net, x, credit.make_rule("bptt"))
    assert torch.equal(out, out_bptt) and all(torch.equal(a, b) for a, b in zip(plain, bptt))
    eprop, _ = _grads(net, x, credit.make_rule("eprop", net.cell))
    assert any((a - b).abs().max() > 1e-6 for a, b in zip(plain, eprop)), "e-prop should differ with recurrence"
    with torch.no_grad():
        net.cell.w_rec.zero_()
    plain, _ = _grads(net, x, None)
    eprop, _ = _grads(net, x, credit.make_rule("eprop", net.cell))
    for a, b in zip(plain, eprop):  # with no recurrent path the eligibility traces are the whole gradient
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert plain[1].abs().max() > 0, "w_rec's gradient is compared too, and it is not trivially zero"


def _rate_net(activation="relu", n=6, tau=5.0):
    torch.manual_seed(0)
    return Network(RateRNN(3, n, activation=activation, tau=tau, seed=2),
                   Readout(n, 2, tau_out=4.0, seed=3)).double()


@pytest.mark.parametrize("activation", ["relu", "tanh", "linear"])
def test_shadow_recursion_with_exact_gains_and_true_weights_is_bptt(activation):
    net = _rate_net(activation)
    x = torch.randn(25, 3, 3)
    exact = credit.Rule("exact-shadow", recurrent=credit.cut_presynaptic,
                        side=lambda c, h, s: credit.shadow_term(c, h, s, labels=None, sender=credit.exact_sender,
                                                                 propagate=credit.exact_propagation))
    bptt, out = _grads(net, x, None)
    shadow, out_shadow = _grads(net, x, exact)
    assert torch.equal(out, out_shadow), "a rule must not change forward values"
    for a, b in zip(bptt, shadow):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_modprop_limits():
    net = _rate_net()
    x = torch.randn(15, 2, 3)
    eprop, _ = _grads(net, x, credit.make_rule("eprop", net.cell))
    zero_taps, _ = _grads(net, x, credit.make_rule("modprop", net.cell, mu=0.3, taps=0))
    assert all(torch.equal(a, b) for a, b in zip(eprop, zero_taps))
    fir, out_fir = _grads(net, x, credit.make_rule("modprop", net.cell, mu=0.3, taps=14, n_types=2))
    iir, out_iir = _grads(net, x, credit.make_rule("modprop", net.cell, mu=0.3, taps=None, n_types=2))
    for a, b in zip(fir, iir):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert any((a - b).abs().max() > 1e-6 for a, b in zip(eprop, iir))
    with torch.no_grad():
        net.cell.w_rec.zero_()
    eprop, _ = _grads(net, x, credit.make_rule("eprop", net.cell))
    for name in ("mdgl", "modprop"):
        off, _ = _grads(net, x, credit.make_rule(name, net.cell, mu=0.3))
        assert all(torch.equal(a, b) for a, b in zip(eprop, off)), f"{name} with zero modulatory weights"


def _positive_relu_net():
    """A ReLU rate network whose potentials stay positive on ``x`` (every phi' is 1) with non-uniform ``W_rec``."""
    net = _rate_net(n=6)
    with torch.no_grad():
        net.cell.w_in.abs_().add_(0.1)
        net.cell.w_rec.abs_().mul_(0.5)
    x = torch.rand(20, 3, 3, generator=torch.Generator().manual_seed(4)) + 0.5
    assert (net(x).hidden.v > 0).all(), "the test needs phi'(v) = 1 everywhere"
    return net, x


def _mu_hop(mu):
    """The released ModProp code, written out: autodiff with phi'(v_{t-1}) of every recurrent hop replaced by mu."""
    def recurrent(state, w_rec):
        return (state.z.detach() + mu * (state.v - state.v.detach())) @ w_rec
    return credit.Rule("mu-hop", recurrent=recurrent)


def _assert_grads_close(a, b):
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def _differ(a, b):
    return any((p - q).abs().max() > 1e-6 for p, q in zip(a, b))


def test_modprop_true_w_with_mu_1_is_bptt_where_relu_is_linear_and_modprop_is_not():
    net, x = _positive_relu_net()
    bptt, _ = _grads(net, x, None)
    true_w, out = _grads(net, x, credit.make_rule("modprop_true_w", net.cell, mu=1.0, n_types=2))
    assert torch.equal(out, net(x).out), "a rule must not change forward values"
    _assert_grads_close(true_w, bptt)
    w_ab, _ = _grads(net, x, credit.make_rule("modprop", net.cell, mu=1.0, n_types=2))
    assert _differ(w_ab, bptt), "the paper's ModProp propagates through W_ab, not W_rec"


@pytest.mark.parametrize("mu", [0.3, 2.0])
def test_modprop_true_w_is_autodiff_with_mu_in_every_recurrent_hop(mu):
    net, x = _positive_relu_net()
    bptt, _ = _grads(net, x, None)
    true_w, _ = _grads(net, x, credit.make_rule("modprop_true_w", net.cell, mu=mu))
    assert _differ(true_w, bptt), "mu != 1 must change the gradient"
    _assert_grads_close(true_w, _grads(net, x, _mu_hop(mu))[0])
    mixed = _rate_net()  # potentials of both signs: phi' = 0 or 1, and the hops still see mu
    x = torch.randn(20, 3, 3, generator=torch.Generator().manual_seed(5))
    assert (mixed(x).hidden.v < 0).any() and (mixed(x).hidden.v > 0).any()
    _assert_grads_close(_grads(mixed, x, credit.make_rule("modprop_true_w", mixed.cell, mu=mu))[0],
                        _grads(mixed, x, _mu_hop(mu))[0])


class _SelfConnectedRate(RateRNN):
    """A rate cell whose W_rec keeps its diagonal, so a constant W_rec is its own type average."""

    def recurrent_weights(self):
        return self.w_rec


@pytest.mark.parametrize("n_types", [1, 6])
def test_modprop_equals_modprop_true_w_where_w_ab_is_w_rec(n_types):
    torch.manual_seed(0)
    net = Network(_SelfConnectedRate(3, 6, activation="relu", tau=5.0, seed=2),
                  Readout(6, 2, tau_out=4.0, seed=3)).double()
    if n_types == 1:  # one type, constant blocks; with 6 types (one per neuron) any W_rec is its own average
        with torch.no_grad():
            net.cell.w_rec.fill_(0.2)
    labels = credit.type_labels(6, n_types)
    w_rec = net.cell.recurrent_weights().detach()
    assert torch.equal(credit.type_averaged(w_rec, labels), w_rec)
    x = torch.randn(20, 3, 3, generator=torch.Generator().manual_seed(6))
    true_w, _ = _grads(net, x, credit.make_rule("modprop_true_w", net.cell, mu=0.5))
    w_ab, _ = _grads(net, x, credit.make_rule("modprop", net.cell, mu=0.5, n_types=n_types))
    _assert_grads_close(w_ab, true_w)
    assert _differ(true_w, _grads(net, x, None)[0]) and _differ(true_w, _grads(net, x, _mu_hop(1.0))[0])


def test_type_averaged_weights():
    w = torch.arange(16.0).view(4, 4)
    labels = torch.tensor([0, 0, 1, 1])
    w_ab = credit.type_averaged(w, labels)
    assert torch.allclose(w_ab[:2, :2], w[:2, :2].mean().expand(2, 2))
    assert torch.allclose(w_ab[:2, 2:], w[:2, 2:].mean().expand(2, 2))
    assert torch.allclose(w_ab[2:, :2], w[2:, :2].mean().expand(2, 2))
    assert torch.allclose(credit.type_averaged(w, torch.zeros(4, dtype=torch.long)), w.mean().expand(4, 4))
    assert credit.type_labels(7, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_mdgl_is_eprop_plus_one_hop_through_type_averaged_weights():
    torch.manual_seed(0)
    cell = RateRNN(3, 6, activation="relu", tau=5.0, seed=2).double()
    net = Network(cell, Readout(6, 2, seed=3)).double()  # no readout filter: delta_t is local in time
    x = torch.randn(12, 2, 3)

    def last_step_loss(out):
        return out[-1].pow(2).sum()

    labels = credit.type_labels(6, 2)
    mdgl, _ = _grads(net, x, credit.make_rule("mdgl", cell, n_types=2), last_step_loss)
    eprop_rule = credit.make_rule("eprop", cell)
    with torch.no_grad():
        result = net(x)
        delta_T = (2 * result.out[-1]) @ net.readout.w_out.T  # dE/dz_T through the readout
        psi_T = (result.hidden.v[-1] > 0).double()
        w_ab = credit.type_averaged(cell.recurrent_weights(), labels)
        signal = (delta_T * psi_T * (1 - cell.alpha)) @ w_ab.T  # credit reaching z_{T-1}
    net.zero_grad()
    result = net(x, rule=eprop_rule)
    (last_step_loss(result.out) + (signal * result.hidden.z[-2]).sum()).backward()
    for a, p in zip(mdgl, net.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-10, atol=1e-12)


def test_spiking_modprop_and_mdgl_run_and_keep_forward_values():
    net = _network("alif")
    x = (torch.rand(40, 2, 3) < 0.3).double()
    reference = net(x).out
    for rule in (credit.make_rule("mdgl", net.cell, n_types=2), credit.make_rule("modprop", net.cell, mu=0.5)):
        out = net(x, rule=rule).out
        assert torch.equal(out, reference)
        out.sum().backward()
        assert torch.isfinite(net.cell.w_rec.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("variant", sorted(credit.VARIANTS))
@pytest.mark.parametrize("kind", ["rate", "alif"])
def test_every_rule_gives_on_the_gpu_the_gradients_it_gives_on_the_cpu(variant, kind):
    """Rules build their matrices (type labels, random feedback) on the CPU: they must follow the weights' device."""
    rule, feedback = credit.VARIANTS[variant]
    x = (torch.rand(30, 2, 3, generator=torch.Generator().manual_seed(0)) < 0.3).double()
    grads = []
    for device in ("cpu", "cuda"):
        if kind == "rate":
            net = Network(RateRNN(3, 6, activation="relu", tau=5.0, seed=2), Readout(6, 2, seed=3)).double()
        else:
            net = _network("alif")
        net.to(device)
        grads.append(_grads(net, x.to(device), credit.make_rule(rule, net.cell, n_out=2, feedback=feedback, mu=0.5,
                                                                 n_types=2))[0])
    for on_cpu, on_gpu in zip(*grads):
        torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-9, atol=1e-12)


def test_random_feedback_is_fixed_and_symmetric_feedback_tracks_the_readout():
    net = _network("lif")
    rule = credit.make_rule("eprop", net.cell, feedback="random", n_out=2, seed=7)
    before = rule.feedback.clone()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x = (torch.rand(30, 2, 3) < 0.3).double()
    for _ in range(3):
        opt.zero_grad()
        net(x, rule=rule).out.pow(2).sum().backward()
        opt.step()
    assert torch.equal(rule.feedback, before)
    psp = torch.randn(5, 2, 7, requires_grad=True)
    grad_out = torch.randn(5, 2, 2)
    assert credit.make_rule("eprop", net.cell).readout is None  # symmetric: the readout's own transpose
    readout_matmul(psp, net.readout.w_out).backward(grad_out)
    torch.testing.assert_close(psp.grad, grad_out @ net.readout.w_out.detach().T)
    psp.grad = None
    rule.readout(psp, net.readout.w_out).backward(grad_out)
    torch.testing.assert_close(psp.grad, grad_out @ before.T)


def test_hessian_of_an_eprop_trained_model_is_the_rule_free_models():
    net = _rate_net("tanh", n=4)
    x = torch.randn(10, 2, 3, dtype=torch.float64)
    rule = credit.make_rule("eprop", net.cell)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(x, rule=rule).out.pow(2).sum().backward()
        opt.step()
    w0 = net.cell.w_rec.detach().clone()
    v = torch.randn(4, 4, dtype=torch.float64)

    def loss(w, rule_in_loss=None):
        out = torch.func.functional_call(net, {"cell.w_rec": w}, (x,), {"rule": rule_in_loss}).out
        return out.pow(2).sum()

    _, hvp_model = torch.func.jvp(torch.func.grad(loss), (w0,), (v,))  # the analysis: no rule anywhere
    w = w0.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(w, rule), w, create_graph=True)
    (hvp_rule,) = torch.autograd.grad(g, w, grad_outputs=v)  # the e-prop-modified graph, differentiated twice
    dense = torch.autograd.functional.hessian(lambda u: loss(u.view(4, 4)), w0.reshape(-1))
    torch.testing.assert_close(hvp_model.reshape(-1), dense @ v.reshape(-1), rtol=1e-10, atol=1e-10)
    assert (hvp_rule - hvp_model).abs().max() > 1e-3 * hvp_model.abs().max(), \
        "the e-prop graph's second derivative should differ: otherwise this test could not see a leak"


def test_eprop_with_synaptic_delays():
    torch.manual_seed(0)
    net = Network(ALIF(3, 3, 3, n_delay=3, n_ref=1, thr=0.02, seed=4),
                  Readout(6, 2, tau_out=5.0, seed=4)).double()
    with torch.no_grad():
        net.cell.w_in.mul_(3.0)
    x = (torch.rand(50, 2, 3) < 0.3).double()
    rule = credit.make_rule("eprop", net.cell)
    plain, out = _grads(net, x, None)
    eprop, out_eprop = _grads(net, x, rule)
    assert torch.equal(out, out_eprop)
    assert (plain[1] - eprop[1]).abs().max() > 1e-9, "with recurrence e-prop differs from BPTT"
    with torch.no_grad():
        net.cell.w_rec.zero_()
    plain, _ = _grads(net, x, None)
    eprop, _ = _grads(net, x, rule)
    for a, b in zip(plain[:1] + plain[2:], eprop[:1] + eprop[2:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="sgd"), "unknown rule 'sgd'"),
    (dict(name="modprop", mu=0.0), "mu must be a positive number"),
    (dict(name="modprop", mu=-1.0), "mu must be a positive number"),
    (dict(name="modprop", mu=0.5, taps=-1), "taps must be a non-negative integer"),
    (dict(name="modprop_true_w"), "mu must be a positive number"),
    (dict(name="mdgl", n_types=9), "n_types must be an integer between 1 and the number of neurons"),
    (dict(name="eprop", feedback="random"), "random feedback needs n_out"),
    (dict(name="eprop", feedback="mirror"), "feedback must be"),
])
def test_bad_rule_parameters(kwargs, message):
    cell = RateRNN(2, 5)
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        credit.make_rule(name, cell, **kwargs)


def test_rule_variants_name_a_rule_and_its_feedback():
    assert set(rule for rule, _ in credit.VARIANTS.values()) == set(credit.RULES)
    assert credit.variant("eprop_random") == ("eprop", "random") and credit.variant("mdgl") == ("mdgl", "symmetric")
    with pytest.raises(ValueError, match="unknown rule variant 'eprop_transposed'"):
        credit.variant("eprop_transposed")


@pytest.mark.parametrize("kind", ["lif", "alif"])
def test_mdgl_from_a_carried_state_is_eprop_plus_the_hop_with_the_steps_gains(kind):
    """From a carried state with refractory neurons, MDGL's hop uses dz_k/dv_{k-1} by autograd through the step:
    credit reaching z_{k-2} is (1 - alpha) (g_k e_k) W_ab^T, with e_k the readout's dE/dz_k."""
    net = _network(kind)
    cell, readout = net.cell, Readout(7, 2, seed=4).double()  # no readout filter: e_k is local in time
    g = torch.Generator().manual_seed(2)
    state = cell.initial_state(2)._replace(v=0.02 + 0.01 * torch.rand(2, 7, generator=g),
                                           ref=torch.randint(0, 5, (2, 7), generator=g).double())
    x = (torch.rand(30, 2, 3, generator=g) < 0.3).double()
    rule = credit.make_rule("mdgl", cell, n_types=2)

    def grads(z, loss):
        cell.zero_grad()
        loss(readout(z)).backward()
        return [cell.w_in.grad.clone(), cell.w_rec.grad.clone()]

    hidden = cell(x, state, recurrent=rule.recurrent)
    mdgl = grads(hidden.z + rule.side(cell, hidden, state), lambda out: out.pow(2).sum())
    gains = autograd_gains(cell, x, state)
    with torch.no_grad():
        e = 2 * readout(hidden.z) @ readout.w_out.T
        w_ab = credit.type_averaged(cell.recurrent_weights(), credit.type_labels(7, 2))
        signal = (1 - cell.alpha) * (gains[2:] * e[2:]) @ w_ab.T
    assert (state.ref > 2).any() and (gains[2][state.ref > 2] == 0).all() and hidden.z.sum() > 5
    hidden = cell(x, state, recurrent=rule.recurrent)
    expected = grads(hidden.z, lambda out: out.pow(2).sum() + (signal * hidden.z[:-2]).sum())
    for a, b in zip(mdgl, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    carry = Carry(state)  # a Network hands the rule the state its carry started from
    cell.zero_grad()
    Network(cell, readout)(x, rule=rule, carry=carry).out.pow(2).sum().backward()
    for a, b in zip([cell.w_in.grad, cell.w_rec.grad], expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert carry.state is not state
