"""Hessian-vector products and eigenvalues against dense Hessians, finite differences and PyHessian."""
import pyhessian
import pytest
import torch

from rnnnotes import credit, hessian
from rnnnotes.cells import ALIF, RateRNN
from rnnnotes.model import Network, Readout


def _network_loss(kind="rate", seed=0):
    """A float64 network (<= 300 parameters), its loss over a fixed batch, and its parameters."""
    if kind == "rate":
        net = Network(RateRNN(3, 8, tau=4.0, seed=seed), Readout(8, 2, seed=seed)).double()
        x = torch.randn(10, 6, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    else:
        net = Network(ALIF(2, 3, 3, thr=0.02, n_ref=1, tau_a=50.0, seed=seed), Readout(6, 2, tau_out=5.0, seed=seed))
        net = net.double()
        with torch.no_grad():
            net.cell.w_in.mul_(3.0)
        x = torch.rand(30, 4, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.08
    labels = torch.tensor([0, 1, 1, 0, 1, 0][:x.shape[1]])

    def loss(run, weights):
        return torch.nn.functional.cross_entropy(run(x).out[-1], labels)
    loss_fn, params = hessian.model_loss(net, loss, names=[n for n, _ in net.named_parameters()])
    return net, loss_fn, params


def _random_like(params, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}


def _flat(d):
    return torch.cat([t.reshape(-1) for t in d.values()])


@pytest.mark.parametrize("method", ["forward", "double_backward"])
def test_hvp_equals_dense_hessian_and_finite_differences(method):
    _, loss_fn, params = _network_loss()
    assert sum(p.numel() for p in params.values()) <= 300
    v = _random_like(params, 1)
    product = _flat(hessian.hvp(loss_fn, params, v, method=method))
    dense = hessian.dense_hessian(loss_fn, params) @ _flat(v)
    assert (product - dense).norm() <= 1e-8 * dense.norm()
    eps = 1e-5
    grad = torch.func.grad(loss_fn)
    plus = grad({k: p + eps * v[k] for k, p in params.items()})
    minus = grad({k: p - eps * v[k] for k, p in params.items()})
    central = (_flat(plus) - _flat(minus)) / (2 * eps)
    assert (product - central).norm() <= 1e-6 * dense.norm()


def test_hvp_leaves_params_alone():
    _, loss_fn, params = _network_loss()
    tracked = {k: p.clone().requires_grad_() for k, p in params.items()}
    before = {k: p.detach().clone() for k, p in tracked.items()}
    for method in hessian.METHODS:
        hessian.hvp(loss_fn, tracked, _random_like(params, 2), method=method)
    for k, p in tracked.items():
        assert p.grad is None and torch.equal(p.detach(), before[k])


@pytest.mark.parametrize("kind", ["rate", "alif"])
def test_double_backward_operator_builds_the_gradient_once_and_each_product_stays_exact(kind):
    """Lanczos' products reuse one gradient graph: each must still be the dense Hessian times its own vector."""
    _, loss_fn, params = _network_loss(kind)
    evaluations = []

    def counted(p):
        evaluations.append(1)
        return loss_fn(p)
    operator = hessian.HessianOperator(counted, params, method="double_backward")
    H = hessian.dense_hessian(loss_fn, params)
    for seed in range(3):
        x = _flat(_random_like(params, seed))
        assert (operator.matvec(x) - H @ x).norm() <= 1e-8 * (H @ x).norm()
    assert len(evaluations) == 1 and operator.calls == 3


def test_a_parameter_the_gradient_does_not_depend_on_has_zero_curvature():
    def loss_fn(p):
        return (p["a"] ** 3).sum() + 2.0 * p["b"].sum()
    params = {"a": torch.tensor([1.0, -2.0], dtype=torch.float64), "b": torch.zeros(3, dtype=torch.float64)}
    exact = torch.diag(torch.tensor([6.0, -12.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    v = _random_like(params, 0)
    for method in hessian.METHODS:
        torch.testing.assert_close(_flat(hessian.hvp(loss_fn, params, v, method=method)), exact @ _flat(v))
    for hvp in hessian.METHODS:
        top = hessian.top_eigenvalues(loss_fn, params, k=2, hvp=hvp)
        torch.testing.assert_close(top, torch.tensor([6.0, 0.0], dtype=torch.float64), rtol=1e-10, atol=1e-12)


def _quadratic(eigenvalues, seed=0):
    """``L(x) = 1/2 x^T A x`` with ``A = Q diag(eigenvalues) Q^T``: the Hessian is ``A``."""
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    A = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    return (lambda p: 0.5 * p["x"] @ A @ p["x"]), {"x": torch.randn(n, dtype=torch.float64)}


def test_lanczos_finds_the_largest_algebraic_eigenvalues_when_the_largest_magnitude_is_negative():
    spectrum = [-9.0, -3.0, 4.0, 2.5, 1.0, 0.5, 0.1, -0.2] + [0.01 * i for i in range(30)]
    loss_fn, params = _quadratic(spectrum)
    top = hessian.top_eigenvalues(loss_fn, params, k=3)
    torch.testing.assert_close(top, torch.tensor([4.0, 2.5, 1.0], dtype=torch.float64), rtol=1e-6, atol=0)
    magnitude = hessian.top_eigenvalues(loss_fn, params, k=2, largest_magnitude=True)
    torch.testing.assert_close(magnitude, torch.tensor([9.0, 4.0], dtype=torch.float64), rtol=1e-6, atol=0)
    power = hessian.top_eigenvalues(loss_fn, params, k=2, method="power", tol=1e-12, max_iter=5000)
    torch.testing.assert_close(power, torch.tensor([4.0, 2.5], dtype=torch.float64), rtol=1e-5, atol=0)
    power = hessian.top_eigenvalues(loss_fn, params, k=2, method="power", largest_magnitude=True, tol=1e-12,
                                    max_iter=5000)
    torch.testing.assert_close(power, torch.tensor([9.0, 4.0], dtype=torch.float64), rtol=1e-5, atol=0)
    dominant, _, _ = hessian.power_iteration(hessian.HessianOperator(loss_fn, params), 1, tol=1e-12, max_iter=2000)
    assert dominant.item() == pytest.approx(-9.0, rel=1e-6), "PyHessian's iteration finds the largest magnitude"


@pytest.mark.parametrize("spectrum, k, magnitude", [([5.0, 5.0, 1.0, 1.0, 1.0], 3, False), ([2.0] * 5, 2, False),
                                                    ([4.0, 4.0, 4.0, -1.0, -1.0, -1.0], 2, True)])
def test_lanczos_finds_repeated_eigenvalues_as_often_as_they_occur(spectrum, k, magnitude):
    """A random start's Krylov space holds each distinct eigenvalue once: Lanczos must go on past it."""
    loss_fn, params = _quadratic(spectrum)
    exact = torch.tensor(sorted(spectrum, key=abs if magnitude else float, reverse=True)[:k], dtype=torch.float64)
    top = hessian.top_eigenvalues(loss_fn, params, k=k, largest_magnitude=magnitude)
    torch.testing.assert_close(top, exact.abs() if magnitude else exact, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("n, copies, k, magnitude", [(20, 2, 2, False), (30, 3, 3, False), (60, 3, 4, False),
                                                     (40, 2, 3, True)])
def test_lanczos_finds_each_copy_of_a_repeated_top_eigenvalue_in_a_space_it_does_not_exhaust(n, copies, k, magnitude):
    """The Krylov space of one start vector holds one direction of an eigenspace; with many other eigenvalues it is
    not exhausted before the wanted Ritz values converge, and only the check on the deflated operator finds the
    other copies."""
    lead = -3.0 if magnitude else 3.0
    spectrum = [lead] * copies + torch.linspace(-1.0, 2.0, n - copies, dtype=torch.float64).tolist()
    loss_fn, params = _quadratic(spectrum)
    exact = torch.tensor(sorted(spectrum, key=abs if magnitude else float, reverse=True)[:k], dtype=torch.float64)
    found = hessian.top_eigenvalues(loss_fn, params, k=k, largest_magnitude=magnitude, eigenvectors=True)
    torch.testing.assert_close(found.values, exact.abs() if magnitude else exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(found.vectors.T @ found.vectors, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-8)


def test_power_iteration_does_not_stop_between_the_eigenvectors_of_plus_and_minus_lambda():
    """On the saddle x y (eigenvalues +-1) the iterate alternates between two directions while v^T H v stays put:
    PyHessian's rule alone would stop there, at a value that is no eigenvalue."""
    params = {"x": torch.tensor([0.3], dtype=torch.float64), "y": torch.tensor([-0.2], dtype=torch.float64)}
    with pytest.warns(hessian.NotConvergedWarning, match="power iteration"):
        hessian.top_eigenvalues(lambda p: (p["x"] * p["y"]).sum(), params, method="power", largest_magnitude=True)
    assert hessian.top_eigenvalues(lambda p: (p["x"] * p["y"]).sum(), params).item() == pytest.approx(1.0)


def test_lanczos_finds_every_eigenvalue_of_a_recurrent_hessian_with_its_zero_diagonal():
    """The Hessian over ``w_rec`` has one zero eigenvalue per masked diagonal entry."""
    net, _, _ = _network_loss("rate")
    x = torch.randn(10, 6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    loss_fn, params = hessian.model_loss(
        net, lambda run, w: torch.nn.functional.cross_entropy(run(x).out[-1], labels), names=["cell.w_rec"])
    exact = torch.linalg.eigvalsh(hessian.dense_hessian(loss_fn, params)).flip(0)
    assert (exact.abs() < 1e-12).sum() >= 8
    top = hessian.top_eigenvalues(loss_fn, params, k=64, tol=1e-10)
    torch.testing.assert_close(top, exact, rtol=0, atol=1e-10)


def test_iterative_methods_warn_when_max_iter_ends_before_tol():
    loss_fn, params = _quadratic([-10.0, 5.0, 3.0, 1.0, -2.0, 0.5])
    with pytest.warns(hessian.NotConvergedWarning, match="Lanczos"):
        hessian.top_eigenvalues(loss_fn, params, k=3, max_iter=3, tol=1e-14)
    with pytest.warns(hessian.NotConvergedWarning, match="power iteration"):
        hessian.top_eigenvalues(loss_fn, params, k=1, method="power", max_iter=2)


@pytest.mark.parametrize("kind", ["rate", "alif"])
def test_top_eigenvalues_equal_eigvalsh_of_the_dense_hessian(kind):
    _, loss_fn, params = _network_loss(kind)
    exact = torch.linalg.eigvalsh(hessian.dense_hessian(loss_fn, params)).flip(0)[:3]
    result = hessian.top_eigenvalues(loss_fn, params, k=3, eigenvectors=True)
    torch.testing.assert_close(result.values, exact, rtol=1e-6, atol=1e-12)
    H = hessian.dense_hessian(loss_fn, params)
    torch.testing.assert_close(H @ result.vectors, result.vectors * result.values, rtol=0, atol=1e-6)
    again = hessian.top_eigenvalues(loss_fn, params, k=3)
    assert torch.equal(again, result.values), "the same call (same seed) gives the same numbers"
    dense = hessian.top_eigenvalues(loss_fn, params, k=3, method="dense")
    torch.testing.assert_close(dense, exact, rtol=1e-12, atol=1e-14)


def test_spiking_hvp_is_symmetric():
    _, loss_fn, params = _network_loss("alif")
    u, v = _random_like(params, 3), _random_like(params, 4)
    hu, hv = hessian.hvp(loss_fn, params, u), hessian.hvp(loss_fn, params, v)
    assert abs(float(_flat(u) @ _flat(hv) - _flat(v) @ _flat(hu))) <= 1e-10 * float(_flat(hv).norm() * _flat(u).norm())
    assert _flat(hv).norm() > 1e-6, "the surrogate Hessian is not trivially zero"


def test_parameter_subset_and_the_rule_free_model_after_eprop_training():
    net, _, _ = _network_loss()
    x = torch.randn(10, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    rule = credit.make_rule("eprop", net.cell)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x, rule=rule).out[-1], labels).backward()
        opt.step()
    loss_fn, params = hessian.model_loss(
        net, lambda run, _: torch.nn.functional.cross_entropy(run(x).out[-1], labels), names=["cell.w_rec"])
    assert list(params) == ["cell.w_rec"]
    w = net.cell.w_rec.detach().reshape(-1)

    def plain(flat):  # the rule-free model written with plain autograd: what the Hessian must be
        return torch.nn.functional.cross_entropy(
            torch.func.functional_call(net, {"cell.w_rec": flat.view(8, 8)}, (x,)).out[-1], labels)
    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(plain, w)).flip(0)[:2]
    torch.testing.assert_close(hessian.top_eigenvalues(loss_fn, params, k=2), exact, rtol=1e-6, atol=1e-12)

    def through_rule(flat):  # the e-prop graph differentiated twice: not the Hessian
        out = torch.func.functional_call(net, {"cell.w_rec": flat.view(8, 8)}, (x,), {"rule": rule}).out[-1]
        return torch.nn.functional.cross_entropy(out, labels)
    leaf = w.clone().requires_grad_()
    (gr,) = torch.autograd.grad(through_rule(leaf), leaf, create_graph=True)
    rows = torch.stack([torch.autograd.grad(gr[i], leaf, retain_graph=True)[0] for i in range(64)])
    assert (rows - torch.autograd.functional.hessian(plain, w)).abs().max() > 1e-4, "a leak would go unnoticed"


def test_pyhessian_agrees_on_the_top_eigenvalue():
    net, loss_fn, params = _network_loss()
    x = torch.randn(10, 6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])

    class LastStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, inputs):
            return self.net(inputs).out[-1]

    torch.manual_seed(0)  # PyHessian draws its start vector from the global generator
    theirs = pyhessian.hessian(LastStep(), torch.nn.functional.cross_entropy, data=(x, labels), cuda=False)
    value, _ = theirs.eigenvalues(maxIter=2000, tol=1e-10, top_n=1)
    ours = hessian.top_eigenvalues(loss_fn, params, k=1, largest_magnitude=True, tol=1e-10)
    assert ours.item() == pytest.approx(abs(value[0]), rel=1e-3)
    net.zero_grad(set_to_none=True)


@pytest.mark.parametrize("call, message", [
    (lambda f, p: hessian.top_eigenvalues(f, p, k=10_000), "k must be an integer"),
    (lambda f, p: hessian.top_eigenvalues(f, p, k=0), "k must be an integer"),
    (lambda f, p: hessian.top_eigenvalues(f, {}, k=1), "params must be a non-empty dict"),
    (lambda f, p: hessian.hvp(f, p, {}), "v must be a dict with the keys"),
    (lambda f, p: hessian.hvp(f, p, {k: torch.zeros(1) for k in p}), r"v\['cell.w_in'\] must be a tensor of shape"),
    (lambda f, p: hessian.hvp(lambda q: f(q) * float("nan"), p, {k: torch.zeros_like(t) for k, t in p.items()}),
     "loss_fn must return a finite scalar"),
    (lambda f, p: hessian.top_eigenvalues(lambda q: f(q) + float("inf"), p, method="dense"),
     "loss_fn must return a finite scalar"),
    (lambda f, p: hessian.top_eigenvalues(f, p, method="arnoldi"), "method must be"),
    (lambda f, p: hessian.top_eigenvalues(f, p, tolerance=1.0), "unknown options"),
    (lambda f, p: hessian.top_eigenvalues(f, p, k=3, max_iter=2), r"max_iter must be an integer >= 3 \(k\)"),
    (lambda f, p: hessian.top_eigenvalues(f, p, method="power", max_iter=0), "max_iter must be an integer >= 1"),
    (lambda f, p: hessian.top_eigenvalues(f, p, tol=-1.0), "tol must be a finite number"),
    (lambda f, p: hessian.top_eigenvalues(f, p, largest_magnitude="no"), "largest_magnitude must be True or False"),
    (lambda f, p: hessian.top_eigenvalues(f, p, hvp="reverse"), "hvp must be one of"),
    (lambda f, p: hessian.hvp(lambda q: f(q) * torch.ones(2), p, {k: torch.zeros_like(t) for k, t in p.items()}),
     "loss_fn must return a finite scalar"),
    (lambda f, p: hessian.hvp(f, p, {k: torch.full_like(t, float("nan")) for k, t in p.items()}),
     r"v\['cell.w_in'\] must be finite"),
    (lambda f, p: hessian.model_loss(torch.nn.Linear(2, 2), lambda run, w: 0, names=["w_rec"]), "unknown"),
])
def test_bad_input_is_named(call, message):
    _, loss_fn, params = _network_loss()
    with pytest.raises(ValueError, match=message):
        call(loss_fn, params)
