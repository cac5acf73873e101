"""Lyapunov spectra against closed forms: linear maps, determinants, finite differences of the flossing loss."""
import math

import pytest
import torch

from rnnnotes.cells import ALIF, RateRNN, VanillaRNN
from rnnnotes.lyapunov import (SpectrumDivergedError, flossing_loss, jacobian_log_singular_values,
                               lyapunov_spectrum, random_basis, tangent_step)
from rnnnotes.params import VanillaInit


def _linear(A):
    return lambda h, x: h @ A


def _no_input(T, B=1, dtype=torch.float64):
    return torch.zeros(T, B, 0, dtype=dtype)


def _tanh_rnn(N=6, n_in=2, gain=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(N, N, generator=g, dtype=torch.float64) * gain / math.sqrt(N)).requires_grad_()
    w_in = torch.randn(n_in, N, generator=g, dtype=torch.float64)
    x = torch.randn(120, 1, n_in, generator=g, dtype=torch.float64)
    h0 = torch.randn(1, N, generator=g, dtype=torch.float64)
    return W, w_in, x, h0


def test_symmetric_linear_map_gives_log_abs_eigenvalues():
    g = torch.Generator().manual_seed(1)
    M = torch.randn(7, 7, generator=g, dtype=torch.float64)
    A = (M + M.T) / 4
    h0 = torch.randn(1, 7, generator=g, dtype=torch.float64)
    exponents = lyapunov_spectrum(_linear(A), h0, _no_input(600), 4, warmup=100)
    expected = torch.linalg.eigvalsh(A).abs().log().sort(descending=True).values[:4]
    assert torch.allclose(exponents, expected, atol=1e-4)


def test_orthogonal_map_gives_zeros_and_scaled_orthogonal_gives_log_c():
    g = torch.Generator().manual_seed(2)
    Q = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0]
    h0 = torch.randn(1, 8, generator=g, dtype=torch.float64)
    assert lyapunov_spectrum(_linear(Q), h0, _no_input(50), 8).abs().max() < 1e-6
    c = 0.7
    exponents = lyapunov_spectrum(_linear(c * Q), h0, _no_input(50), 3, t_ons=4)
    assert torch.allclose(exponents, torch.full((3,), math.log(c), dtype=torch.float64), atol=1e-6)


def test_sum_of_full_spectrum_is_mean_log_det_of_the_jacobians():
    W, w_in, x, h0 = _tanh_rnn()
    W = W.detach()

    def step(h, s):
        return torch.tanh(h) @ W + s @ w_in
    warmup = 15
    exponents = lyapunov_spectrum(step, h0, x, 6, warmup=warmup)
    h, logdets = h0, []
    for t, s in enumerate(x):
        jac = torch.autograd.functional.jacobian(lambda state: step(state, s), h)[0, :, 0, :]
        if t >= warmup:
            logdets.append(torch.linalg.slogdet(jac)[1])
        h = step(h, s)
    expected = torch.stack(logdets).mean()
    assert abs(exponents.sum() - expected) <= 1e-6 * abs(expected)


def test_fewer_exponents_are_the_leading_ones_of_the_full_spectrum():
    W, w_in, x, h0 = _tanh_rnn(seed=3)
    step = lambda h, s: torch.tanh(h) @ W.detach() + s @ w_in  # noqa: E731
    full = lyapunov_spectrum(step, h0, x, 6, warmup=10, seed=5)
    assert torch.allclose(lyapunov_spectrum(step, h0, x, 2, warmup=10, seed=5), full[:2], atol=1e-10)
    assert (full[:-1] >= full[1:]).all()


def test_qr_interval_and_a_last_partial_block_do_not_change_the_exponents():
    """QR every 3 steps over T = 10 (blocks 3, 6, 9, 10) equals QR every step: the triangular factors of a block
    are the products of the per-step ones, so a dropped or mis-counted last block would show."""
    W, w_in, x, h0 = _tanh_rnn(seed=4)
    step = lambda h, s: torch.tanh(h) @ W.detach() + s @ w_in  # noqa: E731
    every = lyapunov_spectrum(step, h0, x[:10], 4, warmup=0)
    blocks = lyapunov_spectrum(step, h0, x[:10], 4, warmup=0, t_ons=3)
    assert torch.allclose(every, blocks, atol=1e-10)
    late = lyapunov_spectrum(step, h0, x[:10], 4, warmup=4, t_ons=3)  # blocks 3, 4 | 6, 9, 10
    assert torch.allclose(late, lyapunov_spectrum(step, h0, x[:10], 4, warmup=4), atol=1e-10)
    assert not torch.allclose(late, every, atol=1e-3)


def test_batch_of_trajectories_averages_the_per_trajectory_exponents():
    W, w_in, x, h0 = _tanh_rnn(seed=6)
    step = lambda h, s: torch.tanh(h) @ W.detach() + s @ w_in  # noqa: E731
    other = torch.randn_like(x)
    h0s, xs = torch.cat([h0, -h0]), torch.cat([x, other], dim=1)
    each = lyapunov_spectrum(step, h0s, xs, 3, warmup=5, per_trajectory=True)
    assert each.shape == (2, 3)
    assert torch.allclose(each[0], lyapunov_spectrum(step, h0, x, 3, warmup=5), atol=1e-10)
    assert torch.allclose(each[1], lyapunov_spectrum(step, -h0, other, 3, warmup=5), atol=1e-10)
    assert torch.allclose(lyapunov_spectrum(step, h0s, xs, 3, warmup=5), each.mean(0), atol=1e-12)


def test_flossing_loss_gradient_matches_central_differences():
    W, w_in, x, h0 = _tanh_rnn(seed=7)
    x = x[:40]

    def loss(w):
        return flossing_loss(lyapunov_spectrum(lambda h, s: torch.tanh(h) @ w + s @ w_in, h0, x, 3, warmup=5), 0.1)
    grad, = torch.autograd.grad(loss(W), W)
    eps = 1e-6
    for i, j in [(0, 1), (2, 2), (5, 3)]:
        E = torch.zeros_like(W)
        E[i, j] = eps
        numeric = (loss(W.detach() + E) - loss(W.detach() - E)) / (2 * eps)
        assert abs(grad[i, j] - numeric) <= 1e-5 * max(1.0, abs(numeric))
    assert grad.abs().max() > 1e-3


def test_flossing_loss_sums_the_squared_distances_as_the_paper_or_averages_them_as_the_original_code():
    exponents = torch.tensor([0.0, -1.0, 2.0])
    assert flossing_loss(exponents, 1.0) == pytest.approx(1 + 4 + 1)
    assert flossing_loss(exponents, 1.0, reduction="mean") == pytest.approx((1 + 4 + 1) / 3)
    with pytest.raises(ValueError, match="reduction"):
        flossing_loss(exponents, reduction="max")


def test_long_term_jacobian_singular_values_match_the_dense_product():
    W, w_in, x, h0 = _tanh_rnn(seed=8)
    step = lambda h, s: torch.tanh(h) @ W.detach() + s @ w_in  # noqa: E731
    logs = jacobian_log_singular_values(step, h0, x[:8])  # short: the dense product keeps every singular value
    h, product = h0, torch.eye(6, dtype=torch.float64)
    for s in x[:8]:
        jac = torch.autograd.functional.jacobian(lambda state: step(state, s), h)[0, :, 0, :]
        product, h = jac @ product, step(h, s)
    assert torch.allclose(logs[-1, 0], torch.linalg.svdvals(product).log(), atol=1e-8)
    assert logs.shape == (8, 1, 6) and (logs[-1, 0, 0] - logs[-1, 0, -1]) > 5


def test_long_term_jacobian_keeps_singular_values_beyond_float32_range():
    # float32 map, symmetric: the singular values of A^t are |eig|^t exactly, here down to e^-359 (float32: e^-103)
    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    eig = torch.tensor([0.9, -0.5, 0.2, 0.05], dtype=torch.float64)
    A = ((Q * eig) @ Q.T).float()
    logs = jacobian_log_singular_values(lambda h, x: h @ A, torch.randn(1, 4, generator=g), torch.zeros(120, 1, 0))
    exact = torch.arange(1, 121, dtype=torch.float64)[:, None] * eig.abs().log()
    assert logs.dtype == torch.float32 and torch.isfinite(logs).all()
    torch.testing.assert_close(logs[:, 0].double(), exact, rtol=1e-5, atol=1e-5)


def test_vanilla_rnn_coordinates_agree_asymptotically_and_match_its_equation():
    cell = VanillaRNN(1, 12, VanillaInit(g=1.5), seed=0).double()
    x = torch.bernoulli(torch.full((400, 1, 1), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    state = cell.initial_state(1)
    out, nxt = cell.step(cell.input_current(x[0]), state)
    expected = torch.tanh(state.v) @ cell.w_rec + cell.b + x[0] @ cell.w_in
    assert torch.allclose(out.v, expected, atol=1e-12) and torch.allclose(nxt.z, torch.tanh(expected))
    spectra = []
    for coordinates in ("potential", "rate"):
        sm = cell.state_map(coordinates)
        spectra.append(lyapunov_spectrum(sm.step, sm.pack(state), x, 4, warmup=20))
    assert torch.allclose(*spectra, atol=0.02)
    assert not torch.equal(*spectra)


@pytest.mark.parametrize("make, coordinates", [
    (lambda: RateRNN(2, 7, activation="tanh", tau=5.0, seed=0), None),
    (lambda: RateRNN(2, 7, activation="relu", tau=3.0, seed=1), None),
    (lambda: VanillaRNN(2, 7, VanillaInit(g=1.4), seed=2), "potential"),
    (lambda: VanillaRNN(2, 7, VanillaInit(g=1.4), seed=2), "rate")])
def test_closed_form_tangents_equal_autodiff(make, coordinates):
    cell = make().double()
    sm = cell.state_map() if coordinates is None else cell.state_map(coordinates)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, 2, generator=g, dtype=torch.float64)
    h0 = sm.pack(cell.initial_state(3, dtype=torch.float64)) + torch.rand(3, 7, generator=g, dtype=torch.float64)
    Q = torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    closed, auto = sm.tangent(h0, x[0], Q), tangent_step(sm.step, h0, x[0], Q)
    assert torch.allclose(closed[0], auto[0], atol=1e-12) and torch.allclose(closed[1], auto[1], atol=1e-12)
    assert torch.allclose(lyapunov_spectrum(sm, h0, x, 5, warmup=3), lyapunov_spectrum(sm.step, h0, x, 5, warmup=3),
                          atol=1e-10)


def test_spiking_cell_surrogate_spectrum_is_finite_and_collapse_is_reported():
    cell = ALIF(3, 6, 6, seed=0, n_delay=1, thr=0.02).double()
    sm = cell.state_map()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(200, 2, 3, generator=g) < 0.3).double()
    h0 = sm.pack(cell.initial_state(2, dtype=torch.float64))
    exponents = lyapunov_spectrum(sm.step, h0, x, 4, warmup=10)
    assert torch.isfinite(exponents).all()
    with pytest.raises(SpectrumDivergedError, match="collapsed"):
        lyapunov_spectrum(sm.step, h0, x, h0.shape[1], warmup=10)  # the refractory counters have no tangent


def test_exploding_map_stops_naming_the_step():
    """h_t = 3^t overflows float32 at step 81 (3^81 > 3.4e38): the block of steps 81..85 is named."""
    h0 = torch.ones(1, 3)
    with pytest.raises(SpectrumDivergedError, match=r"steps 81\.\.85 \(of 200\)"):
        lyapunov_spectrum(_linear(torch.eye(3) * 3.0), h0, _no_input(200, dtype=torch.float32), 2, t_ons=5)


def test_a_map_exploding_during_the_warmup_is_named_at_its_step():
    h0 = torch.ones(1, 3)
    with pytest.raises(SpectrumDivergedError, match=r"steps 81\.\.85 \(of 200\)"):
        lyapunov_spectrum(_linear(torch.eye(3) * 3.0), h0, _no_input(200, dtype=torch.float32), 2, t_ons=5, warmup=150)


@pytest.mark.parametrize("kwargs, name", [
    (dict(k=0), "k"), (dict(k=4), "k"), (dict(k=1.5), "k"), (dict(t_ons=0), "t_ons"), (dict(warmup=10), "warmup"),
    (dict(warmup=-1), "warmup")])
def test_bad_arguments_are_named(kwargs, name):
    args = dict(k=2, t_ons=1, warmup=0)
    args.update(kwargs)
    k = args.pop("k")
    with pytest.raises(ValueError, match=name):
        lyapunov_spectrum(_linear(torch.eye(3)), torch.ones(1, 3), torch.zeros(10, 1, 0), k, **args)


def test_one_unbatched_trajectory_equals_a_batch_of_one():
    W, w_in, x, h0 = _tanh_rnn(seed=4)
    W = W.detach()
    batched = lyapunov_spectrum(lambda h, s: torch.tanh(h) @ W + s @ w_in, h0, x, 3, warmup=10)
    column = lyapunov_spectrum(lambda h, s: W.T @ torch.tanh(h) + w_in.T @ s, h0[0], x[:, 0], 3, warmup=10)
    torch.testing.assert_close(column, batched, rtol=0, atol=1e-12)
    singular = jacobian_log_singular_values(lambda h, s: W.T @ torch.tanh(h) + w_in.T @ s, h0[0], x[:5, 0])
    torch.testing.assert_close(singular, jacobian_log_singular_values(
        lambda h, s: torch.tanh(h) @ W + s @ w_in, h0, x[:5]), rtol=0, atol=1e-12)


def test_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match="h0"):
        lyapunov_spectrum(_linear(torch.eye(3)), torch.ones(1, 1, 3), torch.zeros(10, 1, 0), 1)
    with pytest.raises(ValueError, match="inputs"):
        lyapunov_spectrum(_linear(torch.eye(3)), torch.ones(2, 3), torch.zeros(10, 1, 0), 1)


def test_random_basis_is_orthonormal_seeded_and_nested():
    q = random_basis(9, 4, seed=3, dtype=torch.float64)[0]
    assert torch.allclose(q.T @ q, torch.eye(4, dtype=torch.float64), atol=1e-12)
    assert torch.equal(q, random_basis(9, 4, seed=3, dtype=torch.float64)[0])
    assert not torch.equal(q, random_basis(9, 4, seed=4, dtype=torch.float64)[0])
    full = random_basis(9, 9, seed=3, dtype=torch.float64)[0]
    assert torch.allclose(full[:, :4].abs(), q.abs(), atol=1e-12)
