r"""Recurrent networks with Hebbian plastic synapses (Miconi: backpropagation of Hebbian plasticity, BOHP; and
differentiable plasticity, Miconi et al. 2018), their exact forward-mode gradient and BPTT.

Row-vector convention, ``w[i, j]`` from neuron ``i`` to neuron ``j``. BOHP's naming, used here (``eta`` the
*retention*): before the output of step ``t``, the trace is updated with the pre-synaptic activity of ``t-2`` and
the post-synaptic activity of ``t-1``,

.. math:: H(t) = \eta H(t-1) + (1 - \eta)\, y(t-2)^\top y(t-1), \qquad
          y(t) = \tanh\big(y(t-1)\,(w + \alpha \circ H(t)) + u(t)\big),

with ``alpha``'s diagonal held at zero (no plastic autapses) and ``y(0) = y(-1) = 0``, ``H(0) = 0``.
Differentiable plasticity writes the same recurrence as :math:`y_t = \tanh(y_{t-1}(w + \alpha \circ H_{t-1}) +
u_t)`, :math:`H_t = (1 - \eta') H_{t-1} + \eta' y_{t-1}^\top y_t`: the same trajectory with :math:`H_{t-1} = H(t)`
and the rate :math:`\eta' = 1 - \eta` (``PlasticRNN(eta_is="rate")``).
"""
import math
import numbers
import time
from typing import NamedTuple

import pandas as pd
import torch
from torch import nn

from .recurrent import StateMap
from .checks import require_bool, require_integer
from .memory import autograd_saved_bytes, available_bytes
from .seeding import generator, resolve_seed


class PlasticState(NamedTuple):
    y: torch.Tensor  # (B, n) y(t-1)
    y_prev: torch.Tensor  # (B, n) y(t-2)
    hebb: torch.Tensor  # (B, n, n) H(t-1), pre x post


class PlasticOutput(NamedTuple):
    y: torch.Tensor  # (T, B, n) outputs, or (B, n) for one step
    hebb: torch.Tensor  # (B, n, n) the Hebbian trace after the last step


def plastic_step(u, state, w, alpha, eta):
    r"""One step of the BOHP recurrence (module docstring): the new trace :math:`H(t)`, then :math:`y(t)`."""
    hebb = torch.lerp(state.y_prev.unsqueeze(2) * state.y.unsqueeze(1), state.hebb, eta)
    y = torch.tanh(torch.baddbmm(u.unsqueeze(1), state.y.unsqueeze(1), torch.addcmul(w, alpha, hebb)).squeeze(1))
    return PlasticOutput(y=y, hebb=hebb), PlasticState(y=y, y_prev=state.y, hebb=hebb)


class PlasticRNN(nn.Module):
    r"""``n`` fully connected tanh neurons with plastic synapses :math:`w + \alpha \circ H` (:func:`plastic_step`),
    every neuron receiving its input ``u (T, B, n)`` directly.

    The argument ``eta`` is the trace's retention (``eta_is="retention"``, BOHP: 0.99) or, with ``eta_is="rate"``,
    differentiable plasticity's rate (0.01 gives the same network). Either way the attribute ``eta`` holds the
    retention (``PlasticRNN(4, eta=0.01, eta_is="rate").eta`` is 0.99; the rate is ``1 - eta``): a buffer, or with
    ``learn_eta=True`` a parameter, whose gradient ``bptt_gradient(...)["eta"]`` is with respect to the retention
    (the negative of the gradient with respect to the rate). ``init``:
    ``"bohp"`` (:math:`w \sim \mathcal N(0, 1.21 / n)`, :math:`\alpha \sim 0.01\, \mathcal U(0, 1)`) or ``"dp"``
    (both :math:`0.01\, \mathcal N(0, 1)`), drawn from the stream ``(seed, "plastic-weights")``. ``alpha``'s diagonal
    is zero and is kept so (the step uses the masked matrix, so it never receives a gradient).
    """

    def __init__(self, n, *, eta=0.99, eta_is="retention", learn_eta=False, init="bohp", seed=None):
        super().__init__()
        require_integer(n=n)
        if n < 2:
            raise ValueError(f"n must be an integer >= 2, got {n!r}")
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
        require_bool(learn_eta=learn_eta)
        if eta_is not in ("retention", "rate"):
            raise ValueError(f"eta_is must be 'retention' (BOHP) or 'rate' (differentiable plasticity), got {eta_is!r}")
        if init not in ("bohp", "dp"):
            raise ValueError(f"init must be 'bohp' or 'dp', got {init!r}")
        self.n, self.seed = int(n), resolve_seed(seed)
        g = generator(self.seed, "plastic-weights")
        if init == "bohp":
            w, alpha = torch.randn(n, n, generator=g) * 1.1 / math.sqrt(n), torch.rand(n, n, generator=g) * 0.01
        else:
            w, alpha = torch.randn(n, n, generator=g) * 0.01, torch.randn(n, n, generator=g) * 0.01
        self.w = nn.Parameter(w)
        self.alpha = nn.Parameter(alpha * (1.0 - torch.eye(n)))
        retention = torch.tensor(float(eta if eta_is == "retention" else 1.0 - eta))
        if learn_eta:
            self.eta = nn.Parameter(retention)
        else:
            self.register_buffer("eta", retention)

    def plastic_weights(self):
        """``alpha`` with its diagonal forced to zero."""
        return self.alpha * (1.0 - torch.eye(self.n, dtype=self.alpha.dtype, device=self.alpha.device))

    def initial_state(self, batch, *, device=None, dtype=None):
        zeros = torch.zeros(batch, self.n, device=device or self.w.device, dtype=dtype or self.w.dtype)
        return PlasticState(y=zeros, y_prev=zeros.clone(), hebb=zeros.new_zeros(batch, self.n, self.n))

    def step(self, u, state):
        """One step on ``u (B, n)``: ``(PlasticOutput, PlasticState)``."""
        return plastic_step(u, state, self.w, self.plastic_weights(), self.eta)

    def forward(self, u, state=None):
        """Run ``u (T, B, n)``: :class:`PlasticOutput` with ``y (T, B, n)`` and the final trace."""
        self.check_input(u)
        if state is None:
            state = self.initial_state(u.shape[1], device=u.device, dtype=u.dtype)
        elif not isinstance(state, PlasticState) or state.y.shape != (u.shape[1], self.n):
            raise ValueError(f"state must be a PlasticState for batch {u.shape[1]} and n = {self.n}")
        w, alpha, ys = self.w, self.plastic_weights(), []
        for u_t in u:
            out, state = plastic_step(u_t, state, w, alpha, self.eta)
            ys.append(out.y)
        return PlasticOutput(y=torch.stack(ys), hebb=state.hebb)

    def check_input(self, u):
        """Raise ``ValueError`` naming ``u`` unless it is a ``(T >= 1, B, n)`` tensor of the weights' dtype."""
        if not torch.is_tensor(u) or u.dim() != 3 or u.shape[0] < 1 or u.shape[2] != self.n:
            raise ValueError(f"u must have shape (T >= 1, B, {self.n}), got {tuple(getattr(u, 'shape', ()))}")
        if u.dtype != self.w.dtype:
            raise ValueError(f"u must have the weights' dtype {self.w.dtype}, got {u.dtype}")

    def state_map(self):
        """The step on the flat state ``h = [y(t-1), y(t-2), vec H]``, ``(B, 2n + n^2)`` (:class:`StateMap`)."""
        n = self.n

        def pack(state):
            return torch.cat([state.y, state.y_prev, state.hebb.flatten(1)], dim=-1)

        def unpack(h):
            return PlasticState(y=h[:, :n], y_prev=h[:, n:2 * n], hebb=h[:, 2 * n:].reshape(-1, n, n))

        def step(h, u):
            return pack(self.step(u, unpack(h))[1])
        return StateMap(step=step, pack=pack, unpack=unpack, differentiable=torch.ones(2 * n + n * n, dtype=torch.bool))


def final_loss(y_last, target):
    r""":math:`\frac12 \sum (y_T - \mathrm{target})^2` over neurons and batch; NaN targets are not scored."""
    error = torch.where(torch.isnan(target), 0.0, y_last - target)
    return 0.5 * error.pow(2).sum()


def _check_target(net, u, target):
    net.check_input(u)
    if not torch.is_tensor(target) or tuple(target.shape) != (u.shape[1], net.n):
        raise ValueError(f"target must have shape (B, n) = ({u.shape[1]}, {net.n}), the last step's, got "
                         f"{tuple(getattr(target, 'shape', ()))}")


def bptt_gradient(net, u, target):
    """``(loss, {"w": dL/dw, "alpha": dL/dalpha})`` of :func:`final_loss` at the last step, by autograd (and
    ``"eta"`` when ``net`` learns it)."""
    _check_target(net, u, target)
    loss = final_loss(net(u).y[-1], target)
    names = ["w", "alpha"] + (["eta"] if net.eta.requires_grad else [])
    grads = torch.autograd.grad(loss, [getattr(net, name) for name in names])
    return loss.detach(), dict(zip(names, grads))


def forward_mode_bytes(n, batch=1, dtype=torch.float64):
    """Peak bytes of :func:`forward_mode_gradient`: the carried ``dH/dθ`` (``n^4``) and ``dy/dθ`` at two steps
    (``2 n^3``) for both θ, times two for the new trace's temporaries."""
    return 2 * batch * (2 * n ** 4 + 4 * n ** 3) * torch.finfo(dtype).bits // 8


def forward_mode_gradient(net, u, target):
    r"""``(loss, {"w": dL/dw, "alpha": dL/dalpha})`` of :func:`final_loss`, by BOHP's forward-mode recurrence:
    carried :math:`\partial y(t)/\partial\theta`, :math:`\partial y(t-1)/\partial\theta` and
    :math:`\partial H(t)/\partial\theta` (:math:`O(n^4)` memory and time per step), for θ in {w, α}:

    .. math:: \partial H_{jk}(t) = \eta\, \partial H_{jk}(t-1) + (1-\eta)\,[\partial y_j(t-2)\, y_k(t-1)
              + y_j(t-2)\, \partial y_k(t-1)],

    .. math:: \partial x_k(t) = \sum_j \partial y_j(t-1) (w + \alpha \circ H(t))_{jk}
              + \sum_j y_j(t-1)\, \alpha_{jk}\, \partial H_{jk}(t) + [\text{direct}]_{k},
              \qquad \partial y_k(t) = (1 - y_k(t)^2)\, \partial x_k(t),

    the direct term of :math:`w_{ab}` being :math:`\delta_{kb}\, y_a(t-1)` and of :math:`\alpha_{ab}`
    :math:`\delta_{kb}\, y_a(t-1) H_{ab}(t)` (zero for :math:`a = b`). Refuses an ``n`` whose carried tensors would
    not fit in the available memory. ``eta`` is fixed, as in BOHP: a network that learns it is refused.
    """
    _check_target(net, u, target)
    if net.eta.requires_grad:
        raise ValueError("forward_mode_gradient holds eta fixed (BOHP); this network learns it (learn_eta=True): "
                         "use bptt_gradient")
    T, B, n = u.shape
    need, free = forward_mode_bytes(n, B, u.dtype), available_bytes(u.device)
    if need > free:
        raise MemoryError(f"forward_mode_gradient at n={n}, batch {B}: about {need / 1e9:.1f} GB of carried "
                          f"tensors, {free / 1e9:.1f} GB available; use bptt_gradient")
    with torch.no_grad():
        w, alpha, eta = net.w, net.plastic_weights(), net.eta.detach()
        state = net.initial_state(B, device=u.device, dtype=u.dtype)
        eye = torch.eye(n, dtype=u.dtype, device=u.device)
        dy = {name: u.new_zeros(B, n, n, n) for name in ("w", "alpha")}  # [batch, k, a, b]
        dy_prev = {name: u.new_zeros(B, n, n, n) for name in dy}
        dhebb = {name: u.new_zeros(B, n, n, n, n) for name in dy}  # [batch, j, k, a, b]
        for u_t in u:
            y, y_prev = state.y, state.y_prev
            out, state = plastic_step(u_t, state, w, alpha, eta)
            effective = w + alpha * out.hebb  # (B, j, k)
            slope = (1.0 - out.y ** 2)[:, :, None, None]
            for name in dy:
                dhebb[name].mul_(eta).addcmul_(dy_prev[name].unsqueeze(2), y[:, None, :, None, None], value=1 - eta)
                dhebb[name].addcmul_(y_prev[:, :, None, None, None], dy[name].unsqueeze(1), value=1 - eta)
                dx = torch.einsum("zjab,zjk->zkab", dy[name], effective)
                dx = dx + torch.einsum("zj,jk,zjkab->zkab", y, alpha, dhebb[name])
                source = y if name == "w" else y.unsqueeze(2) * out.hebb * (1.0 - eye)  # (B, a) or (B, a, b)
                direct = (torch.einsum("za,kb->zkab", source, eye) if name == "w"
                          else torch.einsum("zab,kb->zkab", source, eye))
                dy_prev[name], dy[name] = dy[name], slope * (dx + direct)
        error = torch.where(torch.isnan(target), 0.0, state.y - target)
        grads = {name: torch.einsum("zk,zkab->ab", error, dy[name]) for name in dy}
        return final_loss(state.y, target), grads


def gradient_costs(forward_sizes, bptt_sizes, *, n_steps=66, seed=0, device="cpu"):
    """The cost of one gradient of :func:`final_loss` over an ``n_steps`` episode (float64, batch 1, random inputs
    and target from the stream ``(seed, "gradient-costs", n)``) for a :class:`PlasticRNN` of each size: BOHP's
    forward mode (:func:`forward_mode_gradient`; memory: its computed peak, :func:`forward_mode_bytes`) at
    ``forward_sizes`` and BPTT (:func:`bptt_gradient`; memory: the bytes autograd saves) at ``bptt_sizes``. One
    timed call each. Returns a DataFrame: method, N, seconds, MB."""
    device, rows = torch.device(device), []
    methods = (("forward mode", forward_sizes, forward_mode_gradient), ("BPTT", bptt_sizes, bptt_gradient))
    for method, sizes, gradient in methods:
        for n in sizes:
            g = generator(seed, "gradient-costs", n)
            net = PlasticRNN(n, seed=seed).double().to(device)
            u = torch.randn(n_steps, 1, n, dtype=torch.float64, generator=g).to(device)
            target = torch.randn(1, n, dtype=torch.float64, generator=g).to(device)
            seconds = _seconds(lambda: gradient(net, u, target), device)
            memory = (forward_mode_bytes(n) if gradient is forward_mode_gradient  # BPTT: a second, untimed call
                      else autograd_saved_bytes(lambda: gradient(net, u, target))[1])
            rows.append({"method": method, "N": n, "seconds": seconds, "MB": memory / 1e6})
    return pd.DataFrame(rows)


def _seconds(fn, device):
    """Wall-clock seconds of one call of ``fn`` on ``device`` (CUDA synchronised before and after)."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda _: None)
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start
