"""Plastic networks: forward-mode gradient == BPTT == finite differences, the two namings of the trace, the task."""
import pytest
import torch

from rnnnotes.rate_experiments import HebbianMemory
from rnnnotes.hessian import model_loss, top_eigenvalues
from rnnnotes.lyapunov import lyapunov_spectrum
from rnnnotes.memory import autograd_saved_bytes
from rnnnotes.pattern_completion import CompletionTask, completion_objective, orthogonal_patterns
from rnnnotes.plastic import (PlasticRNN, bptt_gradient, final_loss, forward_mode_bytes, forward_mode_gradient,
                              gradient_costs)
from rnnnotes.train import fit


def _net(n, seed=0, scale=20.0):
    net = PlasticRNN(n, eta=0.9, seed=seed).double()
    with torch.no_grad():
        net.alpha.mul_(scale)  # plasticity strong enough to matter
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(12, 2, n, generator=g, dtype=torch.float64)
    target = torch.randn(2, n, generator=g, dtype=torch.float64)
    target[:, -1] = float("nan")  # an unscored neuron, like the bias neuron
    return net, u, target


@pytest.mark.parametrize("n", [6, 10])
def test_forward_mode_equals_bptt_and_finite_differences(n):
    net, u, target = _net(n, seed=n)
    loss_f, forward = forward_mode_gradient(net, u, target)
    loss_b, backward = bptt_gradient(net, u, target)
    assert loss_f == pytest.approx(loss_b.item(), rel=1e-12)
    for name in ("w", "alpha"):
        assert (forward[name] - backward[name]).abs().max() <= 1e-6 * backward[name].abs().max()
    assert backward["alpha"].abs().max() > 1e-3 and backward["alpha"].diagonal().abs().max() == 0
    eps = 1e-6
    for name, i, j in [("w", 1, 3), ("w", 2, 2), ("alpha", 0, 4), ("alpha", 3, 1)]:
        p = getattr(net, name)
        with torch.no_grad():
            p[i, j] += eps
            up = final_loss(net(u).y[-1], target)
            p[i, j] -= 2 * eps
            down = final_loss(net(u).y[-1], target)
            p[i, j] += eps
        numeric = (up - down) / (2 * eps)
        assert abs(forward[name][i, j] - numeric) <= 1e-6 * max(1.0, abs(numeric))


def test_without_plasticity_the_trace_terms_vanish():
    net, u, target = _net(7, scale=0.0)
    with torch.no_grad():
        net.alpha.zero_()
    _, forward = forward_mode_gradient(net, u, target)
    plain = torch.nn.Parameter(net.w.detach().clone())

    def rnn_loss():
        y = torch.zeros(2, 7, dtype=torch.float64)
        for u_t in u:
            y = torch.tanh(y @ plain + u_t)
        return final_loss(y, target)
    expected, = torch.autograd.grad(rnn_loss(), plain)
    assert torch.allclose(forward["w"], expected, atol=1e-12)


def test_bohp_and_differentiable_plasticity_namings_give_one_trajectory():
    retention = PlasticRNN(5, eta=0.8, seed=3).double()
    rate = PlasticRNN(5, eta=0.2, eta_is="rate", seed=3).double()
    u = torch.randn(20, 3, 5, dtype=torch.float64)
    assert torch.allclose(retention(u).y, rate(u).y, atol=1e-14)
    # differentiable plasticity's own form: y_t from H_{t-1}, then H_t = (1 - eta') H_{t-1} + eta' y_{t-1}^T y_t
    w, alpha = rate.w.detach(), rate.plastic_weights().detach()
    y, hebb, ys = torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, 5, 5, dtype=torch.float64), []
    for u_t in u:
        y_new = torch.tanh((y.unsqueeze(1) @ (w + alpha * hebb)).squeeze(1) + u_t)
        hebb = 0.8 * hebb + 0.2 * y.unsqueeze(2) * y_new.unsqueeze(1)
        y = y_new
        ys.append(y)
    assert torch.allclose(torch.stack(ys), retention(u).y, atol=1e-14)


def test_trace_stays_bounded_and_alpha_diagonal_stays_zero_under_training():
    config = HebbianMemory(n_iterations=5, n_validation=2)
    training = config.build("cpu")
    fit(training)
    assert training.model.alpha.diagonal().abs().max() == 0
    episode = config.completion()(2, generator=torch.Generator().manual_seed(0))
    assert training.model(episode.u).hebb.abs().max() <= 1.0


def test_forward_mode_refuses_what_does_not_fit():
    assert forward_mode_bytes(29) == 2 * (2 * 29 ** 4 + 4 * 29 ** 3) * 8
    net = PlasticRNN(400, seed=0)  # float32: about 412 GB of carried tensors
    with pytest.raises(MemoryError, match=r"about 41\d\.\d GB"):
        forward_mode_gradient(net, torch.zeros(2, 1, 400), torch.zeros(1, 400))


@pytest.mark.parametrize("kwargs, name", [
    (dict(n=1), "n"), (dict(n=4, eta=1.5), "eta"), (dict(n=4, eta=-0.1), "eta"), (dict(n=4, eta_is="decay"), "eta_is"),
    (dict(n=4, init="xavier"), "init"), (dict(n=4, learn_eta="yes"), "learn_eta")])
def test_bad_network_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PlasticRNN(**kwargs)


@pytest.mark.parametrize("gradient", [forward_mode_gradient, bptt_gradient])
@pytest.mark.parametrize("u_shape, target_shape, dtype, message", [
    ((5, 2, 4), (2, 4), torch.float32, "dtype"), ((5, 4), (2, 4), torch.float64, "u must have shape"),
    ((5, 2, 5), (2, 4), torch.float64, "u must have shape"), ((0, 2, 4), (2, 4), torch.float64, "u must have shape"),
    ((5, 2, 4), (2, 5), torch.float64, "target must have shape"),
    ((5, 2, 4), (5, 2, 4), torch.float64, "target must have shape")])
def test_bad_episodes_are_named_by_both_gradients(gradient, u_shape, target_shape, dtype, message):
    net = PlasticRNN(4, seed=0).double()
    with pytest.raises(ValueError, match=message):
        gradient(net, torch.zeros(u_shape, dtype=dtype), torch.zeros(target_shape, dtype=torch.float64))


def test_a_state_of_another_batch_is_named():
    net = PlasticRNN(4, seed=0)
    with pytest.raises(ValueError, match="state must be a PlasticState for batch 2"):
        net(torch.zeros(5, 2, 4), net.initial_state(3))


def test_a_learned_eta_gets_its_gradient_by_bptt_and_is_refused_by_the_forward_mode():
    net = PlasticRNN(4, eta=0.9, learn_eta=True, seed=0).double()
    u = torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.ones(2, 4, dtype=torch.float64) * 0.5
    _, grads = bptt_gradient(net, u, target)
    eps = 1e-6
    with torch.no_grad():
        net.eta += eps
        up = final_loss(net(u).y[-1], target)
        net.eta -= 2 * eps
        down = final_loss(net(u).y[-1], target)
    assert abs(grads["eta"].item()) > 1e-3
    assert grads["eta"].item() == pytest.approx(((up - down) / (2 * eps)).item(), rel=1e-6)
    with pytest.raises(ValueError, match="learn_eta"):
        forward_mode_gradient(net, u, target)


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_patterns=0), "n_patterns"), (dict(n_patterns=28), "n_patterns"), (dict(degrade=1.0), "degrade"),
    (dict(degrade=-0.1), "degrade"), (dict(n_bits=7), "n_bits")])
def test_bad_task_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CompletionTask(**kwargs)


@pytest.mark.parametrize("n_bits, n_patterns", [(30, 2), (6, 2), (28, 8), (12, 10), (1000, 4)])
def test_orthogonal_sets_that_cannot_be_drawn_are_refused_at_construction(n_bits, n_patterns):
    """Two balanced patterns are orthogonal only if n_bits is a multiple of 4; more patterns than
    most_orthogonal_patterns would take too many draws."""
    with pytest.raises(ValueError, match=f"n_patterns must be at most .* for n_bits={n_bits} "):
        CompletionTask(n_bits=n_bits, n_patterns=n_patterns)


@pytest.mark.parametrize("n_bits, n_patterns", [(28, 7), (12, 9)])
def test_the_largest_orthogonal_sets_accepted_are_always_drawn(n_bits, n_patterns):
    """1 to 2 % of these sets take over 10,000 draws (28 bits) or reach a dead end (12 bits): drawn again."""
    episode = CompletionTask(n_bits=n_bits, n_patterns=n_patterns, n_cycles=1)(
        200, generator=torch.Generator().manual_seed(1))
    gram = episode.patterns.permute(1, 0, 2) @ episode.patterns.permute(1, 2, 0)
    assert torch.equal(gram, n_bits * torch.eye(n_patterns).expand(200, -1, -1))


def test_bohp_episode_layout():
    task = CompletionTask.bohp()
    episode = task(4, generator=torch.Generator().manual_seed(1))
    assert episode.u.shape == (66, 4, 29) and task.n_steps == 66
    assert (episode.u[:, :, 28] == 200).all() and torch.isnan(episode.target[:, 28]).all()
    for b in range(4):
        p = episode.patterns[:, b]
        assert torch.equal(p @ p.T, 28 * torch.eye(3)) and (p.sum(1) == 0).all()
        shown = [episode.u[t, b, :28] / 20 for t in range(0, 60, 10)]
        assert all((s.abs() == 1).all() for s in shown) and all((episode.u[t, b, :28] == 0).all() for t in (6, 9))
        order = [int((p == s).all(1).nonzero()) for s in shown]
        assert sorted(order[:3]) == [0, 1, 2] and sorted(order[3:]) == [0, 1, 2]
        cue = episode.u[-1, b, :28] / 20
        assert (cue == 0).sum() == 14 and torch.equal(cue[cue != 0], episode.target[b, :28][cue != 0])
    assert orthogonal_patterns(5, 8, generator=torch.Generator().manual_seed(0)).shape == (5, 8)


def test_objective_scores_pattern_bits_only():
    task = CompletionTask(n_bits=4, n_patterns=1, n_cycles=1)
    episode = task(1, generator=torch.Generator().manual_seed(0))

    class Echo(torch.nn.Module):  # outputs the target itself, and garbage on the bias neuron
        def forward(self, u):
            y = torch.cat([episode.target[:, :4], torch.full((1, 1), 5.0)], 1)
            return type("Out", (), {"y": y.expand(u.shape[0], 1, 5)})
    loss, metrics = completion_objective(Echo(), episode)
    assert loss.item() == 0 and metrics["bit_error"] == 0 and metrics["restored"] == 1


def test_plastic_network_works_with_the_hessian_and_lyapunov_code():
    net, u, target = _net(5)
    loss_fn, params = model_loss(net, lambda run, weights: final_loss(run(u).y[-1], target), names=["alpha"])
    top = top_eigenvalues(loss_fn, params, k=2, method="lanczos", tol=1e-10, max_iter=30)
    dense = top_eigenvalues(loss_fn, params, k=2, method="dense")
    assert torch.allclose(top, dense, rtol=1e-6)
    state_map = net.state_map()
    h0 = state_map.pack(net.initial_state(2, dtype=torch.float64))
    assert torch.isfinite(lyapunov_spectrum(state_map.step, h0, u, 3, warmup=2)).all()


def test_saved_bytes_grow_with_the_episode():
    net = PlasticRNN(8, seed=0)
    short = autograd_saved_bytes(lambda: net(torch.randn(10, 1, 8)).y.sum())[1]
    long = autograd_saved_bytes(lambda: net(torch.randn(40, 1, 8)).y.sum())[1]
    assert long > 3 * short > 0


def test_gradient_costs_name_each_method_and_its_memory():
    costs = gradient_costs([4, 6], [4, 12], n_steps=10, seed=1)
    assert list(costs.columns) == ["method", "N", "seconds", "MB"]
    assert costs[["method", "N"]].values.tolist() == [["forward mode", 4], ["forward mode", 6], ["BPTT", 4],
                                                       ["BPTT", 12]]
    assert (costs["seconds"] > 0).all()
    forward, bptt = costs[costs.method == "forward mode"], costs[costs.method == "BPTT"]
    assert forward["MB"].tolist() == [forward_mode_bytes(4) / 1e6, forward_mode_bytes(6) / 1e6]
    net, u = PlasticRNN(4, seed=1).double(), torch.randn(10, 1, 4, dtype=torch.float64)  # a 10-step episode
    saved = autograd_saved_bytes(lambda: bptt_gradient(net, u, torch.zeros(1, 4, dtype=torch.float64)))[1]
    assert bptt["MB"].iloc[0] == saved / 1e6 and bptt["MB"].iloc[1] > bptt["MB"].iloc[0]

