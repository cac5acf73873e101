"""DEEP R rewiring under Dale's law (Bellec, Kappel, Maass, Legenstein 2018) and the LSNN signed initialisation.

Convention ``x @ W``: ``W[i, j]`` connects presynaptic ``i`` to postsynaptic ``j``, so a neuron's sign is the sign
of its row. A rewired matrix is ``w = s * theta`` where ``theta > 0`` (active) and ``w = 0`` exactly where
``theta <= 0`` (dormant); the active set is read off the weights, ``s * w > 0``.
"""
import math

import torch

from . import seeding
from .checks import require_integer, require_nonnegative, require_positive, require_shape


def _require_connectivity(connectivity):
    require_positive(connectivity=connectivity)
    if connectivity > 1:
        raise ValueError(f"connectivity must lie in (0, 1], got {connectivity!r}")


def _require_signs(name, signs):
    if not torch.is_tensor(signs) or not bool(((signs == 1) | (signs == -1)).all()):
        raise ValueError(f"{name} must be a tensor of +1/-1 values")


def neuron_signs(n, *, frac_excitatory, generator=None, shuffle=False):
    """Dale signs ``(n,)``: ``min(int(frac_excitatory * n) + 1, n)`` units are +1, the rest -1.

    Inhibitory units come first (LSNN-official order, 0.8 * 120 -> 23 I then 97 E); ``shuffle=True`` applies
    ``torch.randperm(n, generator=generator)`` and then needs a seeded ``generator``.
    """
    require_integer(n=n)
    require_positive(n=n)
    require_nonnegative(frac_excitatory=frac_excitatory)
    if frac_excitatory > 1:
        raise ValueError(f"frac_excitatory must lie in [0, 1], got {frac_excitatory!r}")
    n_exc = min(int(frac_excitatory * n) + 1, n)
    signs = torch.cat([-torch.ones(n - n_exc), torch.ones(n_exc)])
    if shuffle:
        if generator is None:
            raise ValueError("generator must be a seeded torch.Generator when shuffle=True")
        signs = signs[torch.randperm(n, generator=generator)]
    return signs


def sign_constrained_init(n_in, n_out, *, signs, connectivity, generator):
    r"""LSNN ``random_sparse_signed_matrix`` times its sparse mask, ``(n_in, n_out)`` float32, ``sign(W[i]) = s_i``.

    On a square ``n_in x n_in`` draw :math:`\theta = |N(0, 1)|`: inhibitory rows are scaled so the total E and I
    mass are equal, each column is balanced to zero sum, and :math:`W = s\theta` is scaled to spectral radius 1
    (no balancing when all signs agree, as in the reference). Columns: the first ``n_out`` if ``n_out <= n_in``
    (as the reference), else ``n_out`` drawn with replacement. The mask sets ``int(connectivity * n_in * n_out)``
    positions drawn with replacement (so slightly fewer are connected); it is full for ``connectivity > 0.95``.
    """
    require_integer(n_in=n_in, n_out=n_out)
    require_positive(n_in=n_in, n_out=n_out)
    _require_connectivity(connectivity)
    _require_signs("signs", signs)
    require_shape("signs", signs, (n_in,))
    s = signs.detach().to("cpu", torch.float64)
    exc, inh = s > 0, s < 0
    theta = torch.randn(n_in, n_in, generator=generator, dtype=torch.float64).abs()
    if exc.any() and inh.any():
        theta[inh] *= theta[exc].sum() / theta[inh].sum()
        # Balancing never flips a sign: a column with net inhibition gets its excess spread evenly over its
        # excitatory entries, one with net excitation over its inhibitory ones; only magnitudes grow.
        col = (s[:, None] * theta).sum(0)
        on = theta > 0
        n_e, n_i = (on & exc[:, None]).sum(0), (on & inh[:, None]).sum(0)
        theta = theta + on * (exc[:, None] * (-col).clamp(min=0) / n_e + inh[:, None] * col.clamp(min=0) / n_i)
    radius = torch.linalg.eigvals(s[:, None] * theta).abs().max()
    if radius > 0:
        theta = theta / radius
    if n_out <= n_in:
        theta = theta[:, :n_out]
    else:
        theta = theta[:, torch.randint(n_in, (n_out,), generator=generator)]
    if connectivity > 0.95:
        mask = torch.ones(n_in, n_out, dtype=torch.bool)
    else:
        n_draw = int(connectivity * n_in * n_out)
        mask = torch.zeros(n_in, n_out, dtype=torch.bool)
        rows = torch.randint(n_in, (n_draw,), generator=generator)
        mask[rows, torch.randint(n_out, (n_draw,), generator=generator)] = True
    return (s[:, None] * theta * mask).float()


class DeepR:
    r"""DEEP R with a global connection budget on sign-fixed weights, modified in place.

    ``weights``: name -> parameter; ``signs``: name -> ``(n_pre,)`` Dale signs or full-shape signs; ``allowed``:
    name -> bool mask of positions that may ever connect (e.g. no diagonal for ``w_rec``). The constructor zeroes
    entries with the wrong sign or not allowed; the budget is :math:`K = \lfloor \sum_m p\,|allowed_m| \rfloor`.

    Training loop order: ``loss.backward()``, ``deepr.before_step()``, ``optimizer.step()``,
    ``deepr.step(lr, step_index)``. Adam directly on ``w = s * theta`` equals Adam on ``theta`` with gradient
    ``s * dL/dw``: Adam is coordinatewise sign-equivariant (m flips sign with s, v does not), so no gradient
    rewriting is needed. Dormant entries keep receiving gradients, so their Adam moments stay regular.
    ``step_index`` must be the global step, so a run resumed from weights, optimizer and ``state_dict()`` is
    bitwise identical (``seed=None`` draws a seed, kept in ``.seed`` and ``state_dict()``). The budget is only
    refilled from below: weights that start with more than K active entries (e.g. a full mask at p > 0.95) stay
    above it until pruning brings them down.
    """

    def __init__(self, weights, signs, *, connectivity, l1, temperature=0.0, seed=0, allowed=None):
        _require_connectivity(connectivity)
        require_nonnegative(l1=l1, temperature=temperature)
        if not isinstance(weights, dict) or not weights:
            raise ValueError("weights must be a non-empty dict of name -> parameter")
        for name, w in weights.items():
            if not torch.is_tensor(w) or w.dim() != 2:
                raise ValueError(f"weights[{name!r}] must be a 2-d tensor")
        self.weights = dict(weights)
        self.connectivity, self.l1, self.temperature = float(connectivity), float(l1), float(temperature)
        self.seed = seeding.resolve_seed(seed)
        self._signs = self._full("signs", signs, self._expand_signs, required=True)
        self._allowed = self._full("allowed", allowed or {}, self._check_allowed, required=False)
        with torch.no_grad():
            for name, w in self.weights.items():
                w.masked_fill_(~self._active(name), 0.0)
        self.budget = int(sum(connectivity * int(a.sum()) for a in self._allowed.values()))
        self._before = None

    def _full(self, arg, given, convert, *, required):
        if not isinstance(given, dict):
            raise ValueError(f"{arg} must be a dict of name -> tensor")
        unknown = sorted(set(given) - set(self.weights))
        if unknown:
            raise ValueError(f"{arg} has unknown names {unknown}; weights are {sorted(self.weights)}")
        missing = sorted(set(self.weights) - set(given))
        if required and missing:
            raise ValueError(f"{arg} is missing names {missing}")
        return {name: convert(f"{arg}[{name!r}]", given.get(name), w) for name, w in self.weights.items()}

    @staticmethod
    def _expand_signs(label, s, w):
        _require_signs(label, s)
        if tuple(s.shape) not in ((w.shape[0],), tuple(w.shape)):
            raise ValueError(f"{label} must have shape ({w.shape[0]},) or {tuple(w.shape)}, got {tuple(s.shape)}")
        s = s.detach().to(w.device, w.dtype)
        return (s[:, None] if s.dim() == 1 else s).expand_as(w).clone()

    @staticmethod
    def _check_allowed(label, a, w):
        if a is None:
            return torch.ones_like(w, dtype=torch.bool)
        if not torch.is_tensor(a) or a.dtype != torch.bool or a.shape != w.shape:
            raise ValueError(f"{label} must be a bool tensor of shape {tuple(w.shape)}")
        return a.to(w.device).clone()

    def _active(self, name):
        w = self.weights[name].detach()
        if self._signs[name].device != w.device or self._signs[name].dtype != w.dtype:  # model moved or cast since
            self._signs[name] = self._signs[name].to(w.device, w.dtype)
            self._allowed[name] = self._allowed[name].to(w.device)
        return (self._signs[name] * w > 0) & self._allowed[name]

    def before_step(self):
        """Record the active masks; call after ``backward`` and before ``optimizer.step()``."""
        self._before = {name: self._active(name) for name in self.weights}

    @torch.no_grad()
    def step(self, lr, step_index):
        r"""Guard, prune, regrow; call right after ``optimizer.step()`` with the current learning rate.

        (a) entries dormant before the optimizer step are reset to 0; (b) on active entries
        :math:`\theta \leftarrow \theta - \eta l_1 + \sqrt{2 \eta T}\,\xi`, and :math:`\theta \le 0` becomes dormant
        (w = 0); (c) :math:`\max(0, K - \#active)` dormant allowed positions are reconnected at
        :math:`\theta = 10^{-12}`, split over matrices by a categorical draw :math:`\propto p\,|allowed_m|` and chosen
        uniformly without replacement. Randomness comes from ``seeding.generator(seed, "deepr", step_index)``.
        """
        require_positive(lr=lr)
        require_integer(step_index=step_index)
        if self._before is None:
            raise RuntimeError("call before_step() before optimizer.step() and step()")
        before, self._before = self._before, None
        g = seeding.generator(self.seed, "deepr", step_index)
        noise_std = math.sqrt(2.0 * lr * self.temperature)
        active, new = {}, {}
        for name, w in self.weights.items():
            s = self._signs[name]
            theta = torch.where(before[name], s * w, torch.zeros_like(w))
            on = theta > 0
            theta = theta - lr * self.l1
            if noise_std > 0:
                theta = theta + noise_std * torch.randn(w.shape, generator=g).to(w.device, w.dtype)
            active[name] = on & (theta > 0)
            new[name] = torch.where(active[name], s * theta, torch.zeros_like(w))  # fresh and contiguous
        n_new = max(0, self.budget - sum(int(a.sum()) for a in active.values()))
        if n_new > 0:
            sizes = torch.tensor([float(a.sum()) for a in self._allowed.values()], dtype=torch.float64)
            draws = torch.multinomial(sizes / sizes.sum(), n_new, replacement=True, generator=g)
            per_matrix = torch.bincount(draws, minlength=len(sizes)).tolist()
            for name, k in zip(self.weights, per_matrix):
                candidates = (~active[name] & self._allowed[name]).flatten().nonzero().squeeze(1).cpu()
                k = min(k, candidates.numel())
                chosen = candidates[torch.randperm(candidates.numel(), generator=g)[:k]].to(new[name].device)
                new[name].view(-1)[chosen] = self._signs[name].reshape(-1)[chosen] * 1e-12
        for name, w in self.weights.items():
            w.copy_(new[name])

    def active_counts(self):
        """Number of active (``s * w > 0``) entries per matrix."""
        return {name: int(self._active(name).sum()) for name in self.weights}

    def connectivity_now(self):
        """Active entries over allowed entries, all matrices together."""
        return sum(self.active_counts().values()) / sum(int(a.sum()) for a in self._allowed.values())

    def state_dict(self):
        """Signs, allowed masks and settings; the active set lives in the weights themselves."""
        return {"signs": {k: v.clone() for k, v in self._signs.items()},
                "allowed": {k: v.clone() for k, v in self._allowed.items()},
                "connectivity": self.connectivity, "l1": self.l1, "temperature": self.temperature,
                "seed": self.seed, "budget": self.budget}

    def load_state_dict(self, state):
        """Restore what ``state_dict()`` returned (names must match this object's weights)."""
        self._signs = self._full("signs", state["signs"], self._expand_signs, required=True)
        self._allowed = self._full("allowed", state["allowed"], self._check_allowed, required=True)
        _require_connectivity(state["connectivity"])
        require_nonnegative(l1=state["l1"], temperature=state["temperature"])
        self.connectivity, self.l1, self.temperature = state["connectivity"], state["l1"], state["temperature"]
        self.seed, self.budget, self._before = state["seed"], int(state["budget"]), None
