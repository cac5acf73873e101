"""The fused time loop (rnnnotes.fused) against the plain per-step path: same outputs, same gradients (parameters,
input and initial state), first and second order, for every cell, with and without delays, refractoriness and
each credit rule; and the rules for when it is taken."""
import itertools

import pytest
import torch

from rnnnotes import credit, fused
from rnnnotes.cells import ALIF, LIF, RateRNN, VanillaRNN
from rnnnotes.functional import RateState, SpikingState, cut_presynaptic
from rnnnotes.memory import autograd_saved_bytes
from rnnnotes.model import LowPass, Network, Readout, lowpass_chunked

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def spiking_cell(kind, n_ref, n_delay, seed=1):
    """A small layer driven hard enough to spike often (and to be refractory often)."""
    cell = (ALIF(5, 4, 5, n_ref=n_ref, n_delay=n_delay, thr=0.05, seed=seed) if kind == "alif"
            else LIF(5, 9, n_ref=n_ref, n_delay=n_delay, thr=0.05, dt=0.5, seed=seed))
    with torch.no_grad():
        cell.w_in.mul_(3.0)
        cell.w_rec.mul_(2.0)
    return cell


def random_state(cell, batch, dtype, seed=7):
    """A non-trivial initial state (spike history included) whose differentiable fields require grad."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda width: torch.rand(batch, width, generator=g, dtype=dtype)  # noqa: E731
    if isinstance(cell, RateRNN):
        return RateState(v=rand(cell.n).requires_grad_(), z=rand(cell.n).requires_grad_())
    spikes = lambda width: (rand(width) < 0.3).to(dtype).requires_grad_(width > 0)  # noqa: E731
    return SpikingState(v=(0.05 * rand(cell.n)).requires_grad_(), z=spikes(cell.n), b=rand(cell.n).requires_grad_(),
                        ref=torch.zeros(batch, cell.n, dtype=dtype), history=spikes((cell.n_delay - 1) * cell.n))


def run(cell, x, state, fast, recurrent=None, checkpoint=None):
    """Outputs and the gradients of a random linear function of every output w.r.t. input, weights and state."""
    x = x.clone().requires_grad_()
    out = cell(x, state, recurrent=recurrent, fast=fast, checkpoint=checkpoint)
    g = torch.Generator().manual_seed(3)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device)).sum() for o in out)
    leaves = [x, *cell.parameters()] + [s for s in (state or ()) if s.requires_grad]
    return list(out) + list(torch.autograd.grad(loss, leaves, allow_unused=True))


@pytest.fixture(params=["compiled", "python"])
def spiking_loops(request, monkeypatch):
    """The fused spiking loops on the CPU as compiled (rnnnotes.native) and as Python (what a GPU runs)."""
    monkeypatch.setenv("RNNNOTES_NATIVE", "1" if request.param == "compiled" else "0")
    return request.param


def assert_same(plain, fast, dtype):
    assert len(plain) == len(fast)
    for i, (a, b) in enumerate(zip(plain, fast)):
        if a is None or b is None:  # unused by one path: the other's gradient must be zero
            assert (a if b is None else b).abs().max() == 0 if (a, b) != (None, None) else True, i
            continue
        scale = max(1.0, a.abs().max().item())
        assert (a - b).abs().max().item() <= TOLERANCE[dtype] * scale, i


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind,n_ref,n_delay,cut", list(itertools.product(["alif", "lif"], [0, 2], [1, 3],
                                                                            [False, True])))
def test_spiking_fast_equals_plain(kind, n_ref, n_delay, cut, dtype, spiking_loops):
    cell = spiking_cell(kind, n_ref, n_delay).to(dtype)
    x = (torch.rand(40, 3, 5, generator=torch.Generator().manual_seed(0)) < 0.3).to(dtype)
    recurrent = cut_presynaptic if cut else None
    states = [None, random_state(cell, 3, dtype)]
    if kind == "alif":  # negative adaptation: some thresholds fall below zero, where z = H((v - A) / A) is not v > A
        states.append(states[1]._replace(b=(-0.3 * states[1].b).detach().requires_grad_()))
    if n_ref:  # refractory counters that are not whole numbers (the step a neuron may spike again is still exact)
        g = torch.Generator().manual_seed(11)
        states.append(states[1]._replace(ref=torch.rand(3, cell.n, generator=g, dtype=dtype) * (n_ref + 1) - 0.5))
    for state in states:
        plain, fast = (run(cell, x, state, f, recurrent) for f in (False, True))
        assert plain[0].sum() > 10  # spikes happen
        if n_ref:  # and refractoriness blocks some of them
            assert ((plain[1][:-1] > plain[2][1:]) & (plain[0][1:] == 0)).any()
        assert_same(plain, fast, dtype)


@pytest.mark.parametrize("steps", [1, 2, 30])
def test_alif_with_a_step_other_than_1ms_and_short_sequences(steps, spiking_loops):
    """dt enters the reset, the spike's 1/dt and the pseudo-derivative; one- and two-step sequences exercise the
    loop's first and last steps and the edges of the delay window."""
    cell = ALIF(5, 4, 5, n_ref=1, n_delay=4, thr=0.05, dt=2.0, seed=1).double()
    with torch.no_grad():
        cell.w_in.mul_(3.0)
        cell.w_rec.mul_(2.0)
    x = (torch.rand(steps, 2, 5, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    state = random_state(cell, 2, torch.float64)
    assert_same(run(cell, x, state, False), run(cell, x, state, True), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("make,cut", list(itertools.product(
    [lambda: RateRNN(5, 7, activation="tanh", seed=3), lambda: RateRNN(5, 7, activation="relu", tau=5.0, seed=3),
     lambda: RateRNN(5, 7, activation="linear", seed=3), lambda: VanillaRNN(5, 7, n_initial=3, seed=4)],
    [False, True])))
def test_rate_fast_equals_plain(make, cut, dtype):
    cell = make().to(dtype)
    x = torch.randn(30, 3, 5, generator=torch.Generator().manual_seed(0), dtype=dtype)
    states = (None,) if isinstance(cell, VanillaRNN) else (None, random_state(cell, 3, dtype))
    for state in states:
        assert_same(*(run(cell, x, state, f, cut_presynaptic if cut else None) for f in (False, True)), dtype)


RULES = [("bptt", {}), ("eprop", {}), ("eprop", {"feedback": "random"}), ("mdgl", {"n_types": 2}),
         ("modprop", {"mu": 0.5, "n_types": 2}), ("modprop", {"mu": 0.5, "taps": 2}),
         ("modprop_true_w", {"mu": 0.5})]


@pytest.mark.parametrize("name,options", RULES)
@pytest.mark.parametrize("make", [lambda: RateRNN(4, 6, activation="relu", seed=2),
                                  lambda: spiking_cell("alif", 2, 1, seed=2)])
def test_every_credit_rule_gives_the_same_gradients(make, name, options, spiking_loops):
    torch.manual_seed(0)
    cell = make().double()
    model = Network(cell, Readout(cell.n, 2, tau_out=3.0, seed=5)).double()
    rule = credit.make_rule(name, cell, n_out=2, **options)
    x = (torch.rand(25, 3, 4 if isinstance(cell, RateRNN) else 5) < 0.4).double()
    results = []
    for switch in (fused.disabled, lambda: torch.enable_grad()):
        with switch():
            out = model(x, rule=rule).out
            results.append(torch.autograd.grad(out.square().sum(), list(model.parameters()), allow_unused=True))
    assert_same(*results, torch.float64)


@pytest.mark.parametrize("make", [lambda: RateRNN(4, 6, seed=2), lambda: spiking_cell("alif", 2, 3)])
def test_second_derivatives_are_the_plain_paths(make):
    """A Hessian-vector product by double backward through the fused path differentiates the plain path."""
    cell = make().double()
    x = (torch.rand(20, 2, cell.n_in, generator=torch.Generator().manual_seed(1)) < 0.4).double()
    v = torch.randn(cell.w_rec.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    products = []
    for fast in (False, True):
        out = cell(x, fast=fast)
        grad, = torch.autograd.grad(out.v.square().sum() + out.z.sum(), cell.w_rec, create_graph=True)
        products.append(torch.autograd.grad((grad * v).sum(), cell.w_rec))
    assert products[0][0].abs().max() > 0
    assert_same(*products, torch.float64)


@pytest.mark.parametrize("activation", ["tanh", "relu", "linear"])
def test_rate_double_backward_matches_the_plain_path_for_every_input(activation):
    """The hand-written adjoint of the fused rate backward (rnnnotes.fused_rate.RateBackward): Hessian-vector products
    for the input, every weight and the initial state, of a loss that reads z and v nonlinearly."""
    g = torch.Generator().manual_seed(4)
    cell = RateRNN(3, 5, activation=activation, tau=4.0, seed=2).double()
    x = torch.randn(15, 2, 3, generator=g, dtype=torch.float64).requires_grad_()
    state = random_state(cell, 2, torch.float64)
    leaves = [x, *cell.parameters(), state.v, state.z]
    tangents = [torch.randn(leaf.shape, generator=g, dtype=torch.float64) for leaf in leaves]
    weights = torch.randn(15, 2, 5, generator=g, dtype=torch.float64)
    products = []
    for fast in (False, True):
        out = cell(x, state, fast=fast)
        loss = (out.z ** 3 * weights).sum() + (out.v.square() * weights.flip(0)).sum()
        grads = torch.autograd.grad(loss, leaves, create_graph=True)
        products.append(list(torch.autograd.grad(grads, leaves, tangents)))
    node, seen = grads[0].grad_fn, []  # the input's gradient is the drive's: the fused adjoint, not a plain rerun
    while node is not None and len(seen) < 5:
        seen.append(type(node).__name__)
        node = node.next_functions[0][0] if node.next_functions else None
    assert "RateBackwardBackward" in seen
    assert all(p.abs().max() > 0 for p in products[0])
    assert_same(*products, torch.float64)


def test_rate_third_derivatives_match_the_plain_path():
    """The hand-written adjoint is itself differentiable by autograd: a third derivative along v, v, v."""
    cell = RateRNN(3, 4, activation="tanh", seed=1).double()
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = []
    for fast in (False, True):
        w = cell.w_rec.detach().clone().requires_grad_()
        out = torch.func.functional_call(cell, {"w_rec": w}, (x,), {"fast": fast})
        derivative = (out.z ** 3).sum()
        for order in range(3):
            derivative = (torch.autograd.grad(derivative, w, create_graph=order < 2)[0] * v).sum()
        results.append(derivative)
    assert results[0].abs() > 0
    torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=0)


def test_the_fused_path_is_taken_where_it_applies(monkeypatch):
    cell = spiking_cell("alif", 2, 1)
    x = torch.rand(6, 2, 5)
    assert type(cell(x).z.grad_fn).__name__ == "SpikingSequenceBackward"
    assert type(cell(x, fast=False).z.grad_fn).__name__ == "StackBackward0"
    assert type(cell(x, recurrent=cut_presynaptic).z.grad_fn).__name__ == "SpikingSequenceBackward"
    with fused.disabled():
        assert type(cell(x).z.grad_fn).__name__ == "StackBackward0"
    monkeypatch.setenv("RNNNOTES_FAST", "0")
    assert type(cell(x).z.grad_fn).__name__ == "StackBackward0"
    assert type(cell(x, fast=True).z.grad_fn).__name__ == "SpikingSequenceBackward"


def test_unknown_hooks_and_transforms_take_the_plain_path_or_refuse_fast():
    cell = RateRNN(3, 4, seed=0).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)

    def hook(state, w_rec):
        return state.presynaptic @ w_rec

    assert type(cell(x, recurrent=hook).z.grad_fn).__name__ == "StackBackward0"
    with pytest.raises(ValueError, match="has no fused form"):
        cell(x, recurrent=hook, fast=True)
    params = {k: p.detach() for k, p in cell.named_parameters()}

    def loss(p, fast):
        return torch.func.functional_call(cell, p, (x,), {"fast": fast}).z.square().sum()
    grads = torch.func.grad(loss)(params, None)  # under a transform the plain path is taken
    expected = torch.autograd.grad(cell(x).z.square().sum(), [cell.w_in, cell.w_rec])
    torch.testing.assert_close(grads["w_rec"], expected[1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="torch.func transform"):
        torch.func.grad(loss)(params, True)


def test_the_fused_path_saves_only_its_outputs():
    """Autograd keeps (T, B, n) tensors for the outputs, the drive and the refractory mask, not every step's
    intermediates (about 8 per step on the plain path here)."""
    cell = spiking_cell("alif", 2, 3)
    x = torch.rand(100, 8, 5)
    fast = autograd_saved_bytes(lambda: cell(x, fast=True))[1]
    plain = autograd_saved_bytes(lambda: cell(x, fast=False))[1]
    per_tensor = 100 * 8 * cell.n * 4
    assert fast <= 4.5 * per_tensor + x.numel() * 4 + 10_000
    assert plain > 1.5 * fast


@pytest.mark.parametrize("make", [lambda: RateRNN(5, 7, seed=3), lambda: spiking_cell("alif", 2, 3)])
def test_checkpointed_chunks_give_the_same_gradients(make, spiking_loops):
    cell = make().double()
    x = (torch.rand(60, 4, 5, generator=torch.Generator().manual_seed(0)) < 0.3).double()
    state = random_state(cell, 4, torch.float64)
    assert_same(run(cell, x, state, False), run(cell, x, state, None, checkpoint=7), torch.float64)
    with pytest.raises(ValueError, match="checkpoint"):
        cell(x, fast=True, checkpoint=10)
    with pytest.raises(ValueError, match="checkpoint"):
        cell(x, checkpoint=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_readout_filter_fused_equals_plain_to_second_order(dtype):
    """The fused low-pass of the readout against its op-by-op loop: values, gradients and a double backward."""
    readout = Readout(6, 2, tau_out=5.0, seed=0).to(dtype)
    z = torch.rand(25, 3, 6, generator=torch.Generator().manual_seed(0), dtype=dtype).requires_grad_()
    g = torch.randn(25, 3, 6, generator=torch.Generator().manual_seed(1), dtype=dtype)
    results = []
    for filter_ in (readout._filter_plain, readout.filter):
        y = filter_(z)
        grad, = torch.autograd.grad((y * g).sum() + y.square().sum(), z, create_graph=True)
        results.append([y, grad, torch.autograd.grad((grad * g).sum(), z)[0]])
    assert type(readout.filter(z).grad_fn).__name__ == "LowPassBackward"
    assert results[0][2].abs().max() > 0
    assert_same(*results, dtype)
    with fused.disabled():
        assert type(readout.filter(z).grad_fn).__name__ == "StackBackward0"
    _, tangent = torch.func.jvp(readout.filter, (z.detach(),), (g,))  # forward mode: the op-by-op loop
    torch.testing.assert_close(tangent, readout._filter_plain(g), rtol=1e-5, atol=1e-6)


def dense_lowpass(kappa, steps):
    """L[t, s] = (1 - kappa) kappa^(t - s) for t >= s: the readout filter y = L x written as a dense matrix."""
    t = torch.arange(steps, dtype=torch.float64)
    return torch.where(t[:, None] >= t, (1 - kappa) * kappa ** (t[:, None] - t).clamp(min=0), 0.0)


@pytest.mark.parametrize("steps, chunk", [(75, 8), (64, 32), (20, 32), (9, 1), (33, 32)])
def test_chunked_filter_is_the_dense_filter(steps, chunk):
    """Chunks that divide the steps, leave a partial last chunk, exceed the steps, or hold one step each."""
    kappa = 0.9
    x = torch.randn(steps, 3, 2, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    expected = (dense_lowpass(kappa, steps) @ x.reshape(steps, 6)).view(steps, 3, 2)
    torch.testing.assert_close(lowpass_chunked(x, kappa, chunk), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the chunked filter runs on a GPU"))])
def test_readout_filter_backward_is_the_filter_run_backwards_in_time(device):
    """The adjoint of y = L x is L^T: on the CPU the loop of lerps, on a GPU the chunked matmuls (40 steps: two
    chunks)."""
    kappa, steps = 0.8, 40
    dense = dense_lowpass(kappa, steps).to(device)
    x = torch.randn(steps, 4, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(steps, 4, dtype=torch.float64, device=device)
    y = LowPass.apply(x, kappa, False)
    torch.testing.assert_close(y, dense @ x, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], dense.T @ g, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(LowPass.apply(x, kappa, True), dense.T @ x, rtol=1e-13, atol=1e-15)


def test_checkpointed_chunks_save_less_than_the_plain_path():
    """The plain spiking path saves about 8 (B, n) tensors per step; chunks keep their outputs and their inputs
    (the drive, which ``autograd_saved_bytes`` does not see inside a checkpoint: added by hand)."""
    cell = spiking_cell("alif", 2, 3)
    x = torch.rand(100, 8, 5)
    plain = autograd_saved_bytes(lambda: cell(x, fast=False))[1]
    chunked = autograd_saved_bytes(lambda: cell(x, checkpoint=10))[1] + 100 * 8 * cell.n * 4
    assert chunked < plain / 1.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("make", [lambda: RateRNN(5, 7, seed=3), lambda: spiking_cell("alif", 2, 3)])
def test_cuda_graphs_replay_the_fused_loop(make):
    """Captured once, replayed with new inputs and weights: the same outputs and gradients as the loop."""
    cell = make().cuda()
    for seed in range(3):  # first call captures, the others replay
        x = (torch.rand(30, 4, 5, generator=torch.Generator().manual_seed(seed)) < 0.3).float().cuda()
        with torch.no_grad():
            cell.w_rec.mul_(1.01)
        assert_same(run(cell, x, None, False), run(cell, x, None, True), torch.float32)
    assert len(cell._graphs) == 1


@pytest.mark.parametrize("cut", [False, True])
def test_vmap_over_seeds_runs_the_batched_loop(cut):
    """``vmap`` over stacked seeds (and over inputs only, shared weights) takes the fused loop's batched form and
    gives each seed's own outputs and gradients."""
    cells = [RateRNN(4, 6, activation="relu", tau=5.0, seed=s).double() for s in range(3)]
    params, buffers = torch.func.stack_module_state(cells)
    x = torch.randn(3, 20, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    recurrent = cut_presynaptic if cut else None

    def one(p, b, xs):
        return torch.func.functional_call(cells[0], (p, b), (xs,), {"recurrent": recurrent})
    out = torch.func.vmap(one)(params, buffers, x)
    assert type(out.z.grad_fn).__name__ == "RateSequenceBackward"
    grads = torch.autograd.grad((out.z.square().sum() + out.v.sum()), [params["w_rec"], params["w_in"]])
    for s, cell in enumerate(cells):
        alone = cell(x[s], fast=False, recurrent=recurrent)
        expected = torch.autograd.grad(alone.z.square().sum() + alone.v.sum(), [cell.w_rec, cell.w_in])
        torch.testing.assert_close(out.z[s], alone.z, rtol=0, atol=1e-12)
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g[s], e, rtol=0, atol=1e-10)
    shared = torch.func.vmap(lambda xs: cells[0](xs, recurrent=recurrent).z)(x)  # weights not vmapped
    grad = torch.autograd.grad(shared.square().sum(), cells[0].w_rec)[0]
    plain = torch.stack([cells[0](xs, fast=False, recurrent=recurrent).z for xs in x])
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, torch.autograd.grad(plain.square().sum(), cells[0].w_rec)[0], rtol=0, atol=1e-10)
