"""DEEP R and the LSNN signed initialisation against the invariants of the digest (section 7.7)."""
import copy
import math

import pytest
import torch
from torch import nn

from rnnnotes import seeding
from rnnnotes.rewiring import DeepR, neuron_signs, sign_constrained_init

N_IN, N, N_OUT = 6, 10, 3
EPS = torch.tensor(1e-12, dtype=torch.float32)


def make_net(*, connectivity, seed=0):
    """Sparse signed ``w_in``, ``w_rec`` (no diagonal) and ``w_out`` (inherits the recurrent signs)."""
    g = torch.Generator().manual_seed(seed)
    s_in = neuron_signs(N_IN, frac_excitatory=0.5, generator=g, shuffle=True)
    s_rec = neuron_signs(N, frac_excitatory=0.8)
    weights = {
        "w_in": nn.Parameter(sign_constrained_init(N_IN, N, signs=s_in, connectivity=connectivity, generator=g)),
        "w_rec": nn.Parameter(sign_constrained_init(N, N, signs=s_rec, connectivity=connectivity, generator=g)),
        "w_out": nn.Parameter(sign_constrained_init(N, N_OUT, signs=s_rec, connectivity=connectivity, generator=g)),
    }
    signs = {"w_in": s_in, "w_rec": s_rec, "w_out": s_rec}
    allowed = {"w_rec": ~torch.eye(N, dtype=torch.bool)}
    x = torch.randn(32, N_IN, generator=g)
    y = torch.randn(32, N_OUT, generator=g)
    return weights, signs, allowed, x, y


def loss_fn(w, x, y):
    h = torch.tanh(x @ w["w_in"])
    h = torch.tanh(h @ (w["w_rec"] * (1 - torch.eye(N))) + h)
    return ((h @ w["w_out"] - y) ** 2).mean()


def full_signs(signs, w):
    return {k: signs[k][:, None].expand_as(w[k]) for k in w}


def train(steps, *, seed=0, connectivity=0.3, l1=1.0, temperature=1e-3, lr=0.01, start=0, state=None, check=None):
    """Adam + DEEP R in the documented order; ``state`` resumes from a previous run's returned state."""
    weights, signs, allowed, x, y = make_net(connectivity=connectivity)
    deepr = DeepR(weights, signs, connectivity=connectivity, l1=l1, temperature=temperature, seed=seed,
                  allowed=allowed)
    opt = torch.optim.Adam(weights.values(), lr=lr)
    if state is not None:
        with torch.no_grad():
            for k, w in weights.items():
                w.copy_(state["weights"][k])
        opt.load_state_dict(state["opt"])
        deepr.load_state_dict(state["deepr"])
    for t in range(start, start + steps):
        opt.zero_grad()
        loss_fn(weights, x, y).backward()
        deepr.before_step()
        before = {k: w.detach().clone() for k, w in weights.items()}
        opt.step()
        deepr.step(lr, t)
        if check is not None:
            check(deepr, weights, signs, before)
    state = {"weights": {k: w.detach().clone() for k, w in weights.items()},
             "opt": copy.deepcopy(opt.state_dict()), "deepr": deepr.state_dict()}
    return weights, deepr, state


def test_invariants_over_200_adam_steps():
    history = {"rewired": 0, "first": None}

    def check(deepr, weights, signs, before):
        s = full_signs(signs, weights)
        counts = deepr.active_counts()
        assert sum(counts.values()) == deepr.budget  # (i) plenty of dormant slots at p = 0.3
        for k, w in weights.items():
            w = w.detach()
            assert (s[k] * w >= 0).all(), k  # (ii) no sign flip
            assert (w[s[k] * w <= 0] == 0).all(), k  # (iii) dormant entries are exactly 0
            new = (s[k] * before[k] <= 0) & (w != 0)
            assert (w[new].abs() == EPS).all(), k  # regrown at theta = 1e-12
            history["rewired"] += int(new.sum())
        assert (torch.diagonal(weights["w_rec"].detach()) == 0).all()  # (iv) no autapse ever connects
        if history["first"] is None:
            history["first"] = {k: (s[k] * w.detach() > 0).clone() for k, w in weights.items()}

    weights, deepr, _ = train(200, check=check)
    assert history["rewired"] > 50
    s = full_signs(make_net(connectivity=0.3)[1], weights)
    assert any((history["first"][k] != (s[k] * w.detach() > 0)).any() for k, w in weights.items())
    assert deepr.connectivity_now() == pytest.approx(deepr.budget / (N_IN * N + N * N - N + N * N_OUT))


def test_budget_counts_allowed_entries_and_constructor_cleans_up():
    weights, signs, allowed, _, _ = make_net(connectivity=1.0)
    with torch.no_grad():
        weights["w_in"][0, 0] = -signs["w_in"][0]  # wrong sign
    deepr = DeepR(weights, signs, connectivity=0.5, l1=0.0, allowed=allowed)
    assert deepr.budget == int(0.5 * (N_IN * N + N * N - N + N * N_OUT))
    assert weights["w_in"][0, 0] == 0
    assert (torch.diagonal(weights["w_rec"].detach()) == 0).all()
    assert deepr.active_counts() == {"w_in": N_IN * N - 1, "w_rec": N * N - N, "w_out": N * N_OUT}


def test_l1_prunes_by_exactly_lr_times_l1_and_regrowth_refills_the_budget():
    weights, signs, allowed, _, _ = make_net(connectivity=0.3)
    deepr = DeepR(weights, signs, connectivity=0.3, l1=0.5, allowed=allowed)
    assert sum(deepr.active_counts().values()) <= deepr.budget
    deepr.before_step()
    deepr.step(0.1, 0)  # no optimizer: the first call fills the budget
    assert sum(deepr.active_counts().values()) == deepr.budget
    s = full_signs(signs, weights)
    w0 = {k: w.detach().clone() for k, w in weights.items()}
    deepr.before_step()
    deepr.step(0.1, 1)
    pruned = 0
    for k, w in weights.items():
        theta0 = s[k] * w0[k]
        big, small = theta0 > 0.05, (theta0 > 0) & (theta0 <= 0.05)
        assert torch.equal(w.detach()[big], (s[k] * (theta0 - 0.1 * 0.5))[big])
        assert ((w.detach()[small] == 0) | (w.detach()[small].abs() == EPS)).all()
        pruned += int(small.sum())
    assert pruned > 0
    assert sum(deepr.active_counts().values()) == deepr.budget


def test_plain_adam_when_l1_and_temperature_are_zero_and_connectivity_is_one():
    weights, signs, allowed, x, y = make_net(connectivity=1.0)
    with torch.no_grad():
        for k, w in weights.items():
            w.add_(0.5 * signs[k][:, None])  # far from zero, so Adam never crosses it
    plain = {k: nn.Parameter(w.detach().clone()) for k, w in weights.items()}
    deepr = DeepR(weights, signs, connectivity=1.0, l1=0.0, temperature=0.0, allowed=allowed)
    with torch.no_grad():
        plain["w_rec"].mul_(1 - torch.eye(N))
    opt, opt_plain = torch.optim.Adam(weights.values(), lr=1e-3), torch.optim.Adam(plain.values(), lr=1e-3)
    s = full_signs(signs, weights)
    for t in range(100):
        for o, w in ((opt, weights), (opt_plain, plain)):
            o.zero_grad()
            loss_fn(w, x, y).backward()
        deepr.before_step()
        opt.step()
        deepr.step(1e-3, t)
        opt_plain.step()
        for k in weights:
            off_diag = allowed.get(k, torch.ones_like(s[k], dtype=torch.bool))
            assert (s[k] * plain[k].detach())[off_diag].min() > 0
            assert torch.equal(weights[k].detach(), plain[k].detach()), (k, t)


def test_same_seed_is_bitwise_reproducible_and_the_seed_matters():
    a, _, _ = train(60, seed=3)
    b, _, _ = train(60, seed=3)
    c, _, _ = train(60, seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_noise_comes_from_the_deepr_stream_of_the_seed():
    seed = 2 ** 31 + 5  # no upper limit below 2**31
    weights = {"w": nn.Parameter(torch.full((6, 6), 1.0))}
    deepr = DeepR(weights, {"w": torch.ones(6)}, connectivity=1.0, l1=0.0, temperature=0.5, seed=seed)
    deepr.before_step()
    deepr.step(0.1, 7)
    noise = math.sqrt(2 * 0.1 * 0.5) * torch.randn(6, 6, generator=seeding.generator(seed, "deepr", 7))
    assert torch.equal(weights["w"].detach(), torch.clamp(1.0 + noise, min=0.0))
    assert DeepR({"w": nn.Parameter(torch.ones(2, 2))}, {"w": torch.ones(2)}, connectivity=1.0, l1=0.0,
                 seed=None).seed >= 0


def test_resume_from_state_dicts_is_bitwise_identical():
    straight, _, _ = train(40, seed=1)
    _, _, half = train(20, seed=1)
    resumed, _, _ = train(20, seed=1, start=20, state=half)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_masks_follow_weights_moved_or_cast_after_deepr_is_built(device):
    """The experiments build DEEP R on the CPU and move the model after: the run equals one built where it runs."""
    def run(move_first):
        weights, signs, allowed, _, _ = make_net(connectivity=0.3)
        if move_first:
            weights = {k: nn.Parameter(w.detach().to(device, torch.float64)) for k, w in weights.items()}
        deepr = DeepR(weights, signs, connectivity=0.3, l1=1.0, temperature=1e-3, seed=0, allowed=allowed)
        for w in weights.values():  # what Module.to does to its parameters
            w.data = w.data.to(device, torch.float64)
        target = {k: torch.randn(w.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
                  for k, w in weights.items()}
        opt = torch.optim.Adam(weights.values(), lr=0.05)
        for t in range(30):
            opt.zero_grad()
            sum(((w - target[k]) ** 2).sum() for k, w in weights.items()).backward()
            deepr.before_step()
            opt.step()
            deepr.step(0.05, t)
        return weights, deepr

    moved, deepr = run(move_first=False)
    built_there, _ = run(move_first=True)
    assert all(torch.equal(moved[k], built_there[k]) for k in moved)
    assert all(s.device == moved[k].device and s.dtype == torch.float64 for k, s in deepr.state_dict()["signs"].items())
    assert sum(deepr.active_counts().values()) == deepr.budget


def test_reconnections_split_across_matrices_by_allowed_size():
    s = neuron_signs(20, frac_excitatory=0.8)
    weights = {"a": nn.Parameter(torch.zeros(20, 20)), "b": nn.Parameter(torch.zeros(20, 60))}
    deepr = DeepR(weights, {"a": s, "b": s}, connectivity=0.1, l1=1e3)
    assert deepr.budget == 160
    shares = []
    for t in range(50):  # the huge l1 prunes everything, so each step regrows the whole budget
        deepr.before_step()
        deepr.step(1.0, t)
        counts = deepr.active_counts()
        assert sum(counts.values()) == 160
        shares.append(counts["b"] / 160)
    assert sum(shares) / len(shares) == pytest.approx(0.75, abs=0.03)


def test_regrowth_is_capped_by_the_dormant_slots_of_each_matrix():
    s = neuron_signs(4, frac_excitatory=0.5)
    weights = {"a": nn.Parameter(torch.zeros(4, 2)), "b": nn.Parameter(torch.zeros(4, 30))}
    deepr = DeepR(weights, {"a": s, "b": s}, connectivity=1.0, l1=1e3)
    for t in range(5):
        deepr.before_step()
        deepr.step(1.0, t)
        counts = deepr.active_counts()
        assert counts["a"] <= 8 and counts["b"] <= 120 and sum(counts.values()) <= deepr.budget


# ---------------------------------------------------------------------------------------- signs and initialisation

def test_neuron_signs_counts_and_order():
    s = neuron_signs(120, frac_excitatory=0.8)
    assert s.dtype == torch.float32 and int((s > 0).sum()) == 97 and int((s < 0).sum()) == 23
    assert (s[:23] == -1).all() and (s[23:] == 1).all()
    assert int((neuron_signs(80, frac_excitatory=0.75) > 0).sum()) == 61
    assert int((neuron_signs(220, frac_excitatory=0.75) > 0).sum()) == 166
    assert (neuron_signs(5, frac_excitatory=1.0) == 1).all()
    a = neuron_signs(80, frac_excitatory=0.75, generator=torch.Generator().manual_seed(2), shuffle=True)
    b = neuron_signs(80, frac_excitatory=0.75, generator=torch.Generator().manual_seed(2), shuffle=True)
    assert torch.equal(a, b) and int((a > 0).sum()) == 61 and not torch.equal(a, neuron_signs(80, frac_excitatory=0.75))


def test_init_signs_and_sparsity():
    g = torch.Generator().manual_seed(0)
    s = neuron_signs(40, frac_excitatory=0.75, generator=g, shuffle=True)
    w = sign_constrained_init(40, 30, signs=s, connectivity=0.3, generator=g)
    assert w.shape == (40, 30) and w.dtype == torch.float32
    nz = w != 0
    assert (torch.sign(w)[nz] == s[:, None].expand_as(w)[nz]).all()
    n_draw = int(0.3 * 40 * 30)
    assert 0.75 * n_draw <= int(nz.sum()) <= n_draw


@pytest.mark.parametrize("frac", [0.75, 0.5, 1.0])
def test_dense_init_is_balanced_with_unit_spectral_radius(frac):
    n = 50
    s = neuron_signs(n, frac_excitatory=frac, generator=torch.Generator().manual_seed(1), shuffle=True)
    w = sign_constrained_init(n, n, signs=s, connectivity=1.0, generator=torch.Generator().manual_seed(5))
    assert (torch.sign(w) == s[:, None]).all()  # every entry connected, none flipped by balancing
    radius = torch.linalg.eigvals(w.double()).abs().max()
    assert float(radius) == pytest.approx(1.0, rel=1e-5)
    if frac < 1:  # zero column sums (no balancing without inhibitory units, as in the reference)
        assert w.sum(0).abs().max() < 1e-5 * w.abs().sum(0).max()


def test_nonsquare_init_takes_columns_of_the_square_matrix_and_full_mask_above_095():
    s = neuron_signs(12, frac_excitatory=0.75)
    square = sign_constrained_init(12, 12, signs=s, connectivity=1.0, generator=torch.Generator().manual_seed(7))
    narrow = sign_constrained_init(12, 5, signs=s, connectivity=1.0, generator=torch.Generator().manual_seed(7))
    wide = sign_constrained_init(12, 30, signs=s, connectivity=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(narrow, square[:, :5])
    assert all(any(torch.equal(wide[:, j], square[:, i]) for i in range(12)) for j in range(30))
    dense = sign_constrained_init(12, 12, signs=s, connectivity=0.96, generator=torch.Generator().manual_seed(7))
    assert torch.equal(dense, square)
    again = sign_constrained_init(12, 30, signs=s, connectivity=0.2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, sign_constrained_init(12, 30, signs=s, connectivity=0.2,
                                                    generator=torch.Generator().manual_seed(3)))


# ------------------------------------------------------------------------------------------------- bad arguments

def _deepr(**overrides):
    weights, signs, allowed, _, _ = make_net(connectivity=0.3)
    kwargs = dict(connectivity=0.3, l1=0.1, temperature=0.0, allowed=allowed)
    kwargs.update(overrides)
    signs = kwargs.pop("signs", signs)
    return DeepR(weights, signs, **kwargs)


@pytest.mark.parametrize("overrides, name", [
    (dict(connectivity=0.0), "connectivity"),
    (dict(connectivity=1.5), "connectivity"),
    (dict(l1=-0.1), "l1"),
    (dict(temperature=-1.0), "temperature"),
    (dict(signs={"w_in": torch.zeros(N_IN), "w_rec": torch.ones(N), "w_out": torch.ones(N)}), "signs['w_in']"),
    (dict(signs={"w_in": torch.ones(N_IN + 1), "w_rec": torch.ones(N), "w_out": torch.ones(N)}), "signs['w_in']"),
    (dict(signs={"w_in": torch.ones(N_IN), "w_rec": torch.ones(N)}), "signs is missing"),
    (dict(signs={"w_in": torch.ones(N_IN), "w_rec": torch.ones(N), "w_out": torch.ones(N), "w_x": torch.ones(2)}),
     "signs has unknown names"),
    (dict(allowed={"w_bogus": torch.ones(N, N, dtype=torch.bool)}), "allowed has unknown names"),
    (dict(allowed={"w_rec": torch.ones(N, N)}), "allowed['w_rec']"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(seed=True), "seed"),
])
def test_bad_deepr_arguments_name_the_parameter(overrides, name):
    with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
        _deepr(**overrides)


def test_bad_step_arguments():
    deepr = _deepr()
    with pytest.raises(RuntimeError, match="before_step"):
        deepr.step(0.1, 0)
    deepr.before_step()
    for lr in (0.0, -0.1):
        with pytest.raises(ValueError, match="lr"):
            deepr.step(lr, 0)


def test_bad_init_arguments():
    s = neuron_signs(8, frac_excitatory=0.5)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="connectivity"):
        sign_constrained_init(8, 8, signs=s, connectivity=0.0, generator=g)
    with pytest.raises(ValueError, match="signs"):
        sign_constrained_init(8, 8, signs=torch.ones(7), connectivity=0.5, generator=g)
    with pytest.raises(ValueError, match="signs"):
        sign_constrained_init(8, 8, signs=s * 0.5, connectivity=0.5, generator=g)
    with pytest.raises(ValueError, match="frac_excitatory"):
        neuron_signs(8, frac_excitatory=1.2)
    with pytest.raises(ValueError, match="generator"):
        neuron_signs(8, frac_excitatory=0.5, shuffle=True)
