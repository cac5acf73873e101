r"""Credit assignment rules: how gradients flow back through time in *training*; forward values never change.

A rule is three optional hooks that ``model.Network`` threads into the forward pass:

- ``recurrent(state, w_rec)`` replaces the recurrent current ``z_{t-1} W_rec``;
- ``side(cell, hidden)`` returns a zero-valued term added to the readout input, which carries non-local credit;
- ``readout(psp, w_out)`` replaces the readout matmul (random feedback).

Rules (Bellec et al. 2020; Liu et al. 2021, 2022):

- ``bptt``: exact gradients.
- ``eprop``: :math:`\partial z_{t-1} / \partial (z_{t-1} W_{rec})` is cut, so credit reaches a synapse only through
  its own neuron's dynamics (eligibility trace) times the learning signal :math:`\partial E / \partial z_t` from the
  readout, with symmetric (:math:`W_{out}`) or fixed random feedback.
- ``mdgl``: e-prop plus one recurrent hop of credit through cell-type-averaged weights :math:`W_{ab}`:
  :math:`L_{t,p} = \partial E/\partial z_{t,p} + \sum_j W_{ab}[p, j]\, \psi_{t+1,j} (1-\alpha)\,
  \partial E/\partial z_{t+1,j}`.
- ``modprop``: e-prop plus credit through :math:`W_{ab}` over ``taps`` time lags (all lags when ``taps=None``),
  with the activation derivative of every intermediate neuron replaced by the constant ``mu``; exact derivatives
  stay where the loss enters and in the eligibility traces.

The non-local credit is one linear "shadow" recursion of the influence of a neuron's activity on later membrane
potentials: :math:`\zeta_k = \alpha \zeta_{k-1} + (1-\alpha)\, y_{k-1} W_{mod}` with :math:`y_k = u_k + c_k \odot
\zeta_{k-\ell}`, read out as :math:`g_k \odot \zeta_{k-\ell}`, where :math:`u` is a zero-valued injection whose
gradient reaches the sender, :math:`c` the intermediate gain (``mu`` or exact), :math:`g` the exact gain
:math:`\partial z_k / \partial v_{k-\ell}` and :math:`\ell` the cell's spike lag (0 for rate cells, 1 for the LSNN
step order). With exact gains and :math:`W_{mod} = W_{rec}` it reproduces BPTT for rate networks exactly.
"""
from typing import Callable, NamedTuple, Optional

import torch

from .cells import RateRNN, _SpikingLayer

RULES = ("bptt", "eprop", "mdgl", "modprop")


class Rule(NamedTuple):
    name: str
    recurrent: Optional[Callable] = None
    side: Optional[Callable] = None
    readout: Optional[Callable] = None
    feedback: Optional[torch.Tensor] = None  # the fixed random feedback matrix (n, n_out), if any


class FeedbackMatmul(torch.autograd.Function):
    """``psp @ w_out`` whose backward sends the error to ``psp`` through a fixed matrix ``feedback`` instead."""

    @staticmethod
    def forward(ctx, psp, w_out, feedback):
        ctx.save_for_backward(psp, feedback)
        return psp @ w_out

    @staticmethod
    def backward(ctx, grad):
        psp, feedback = ctx.saved_tensors
        grad_w = (psp.reshape(-1, psp.shape[-1]).T @ grad.reshape(-1, grad.shape[-1]))
        return grad @ feedback.T, grad_w, None


def _cut_presynaptic(state, w_rec):
    """e-prop: the recurrent current with no gradient into the presynaptic spikes."""
    return state.z.detach() @ w_rec


def type_labels(n, n_types):
    """Type labels ``(n,)``: given as a tensor, or ``n_types`` contiguous near-equal groups of neurons."""
    if isinstance(n_types, torch.Tensor):
        labels = n_types.long()
        if labels.shape != (n,) or labels.min() < 0:
            raise ValueError(f"n_types as labels must be non-negative with shape ({n},), got {tuple(labels.shape)}")
        return labels
    if int(n_types) != n_types or not 1 <= n_types <= n:
        raise ValueError(f"n_types must be an integer between 1 and the number of neurons ({n}), got {n_types!r}")
    return torch.arange(n) * int(n_types) // n


def type_averaged(w, labels):
    """:math:`W_{ab}`: every (type a -> type b) block of ``w`` replaced by its mean (zero diagonal included)."""
    n_types = int(labels.max()) + 1
    one_hot = torch.nn.functional.one_hot(labels, n_types).to(w.dtype)  # (n, K)
    counts = one_hot.sum(0)
    block_mean = one_hot.T @ w @ one_hot / torch.outer(counts, counts)
    return one_hot @ block_mean @ one_hot.T


def _gains(cell, hidden):
    """Exact gain ``g_k = dz_k / dv_{k - lag}`` of every neuron and step (detached), and the lag."""
    if isinstance(cell, RateRNN):
        v = hidden.v.detach()
        return (1.0 - torch.tanh(v) ** 2 if cell.activation == "tanh" else (v > 0).to(v.dtype)), 0
    v_prev = torch.cat([torch.zeros_like(hidden.v[:1]), hidden.v[:-1]]).detach()
    threshold = hidden.threshold.detach()
    v_scaled = (v_prev - threshold) / threshold
    gain = cell.gamma * torch.clamp(1.0 - v_scaled.abs(), min=0.0) / threshold / cell.dt
    spiked = (hidden.z.detach() > 0).to(v_prev.dtype)
    recent = torch.zeros_like(spiked)
    for lag in range(1, cell.n_ref + 1):  # refractory steps pass no gradient
        recent[lag:] = torch.maximum(recent[lag:], spiked[:-lag])
    return gain * (1.0 - recent), 1


def _impulse_response(alpha, w_mod, mu, lag, taps):
    """FIR taps ``K_s`` (s = 1..taps) of the shadow recursion with constant intermediate gain ``mu``."""
    n = w_mod.shape[0]
    eye = torch.eye(n, dtype=w_mod.dtype, device=w_mod.device)
    zeta = [torch.zeros_like(eye) for _ in range(lag + 1)]  # zeta_{k-1-lag} ... zeta_{k-1} of an impulse at 0
    kernels = []
    for s in range(1, taps + 1):
        y_prev = (eye if s == 1 else 0.0) + mu * zeta[-1 - lag]
        zeta.append(alpha * zeta[-1] + (1.0 - alpha) * y_prev @ w_mod)
        kernels.append(zeta[-1])
    return kernels


def _shadow(cell, hidden, *, labels, mu, taps, sender):
    """The zero-valued readout term carrying non-local credit (see the module docstring)."""
    if getattr(cell, "n_delay", 1) != 1:
        raise ValueError("mdgl and modprop need n_delay = 1 (credit hops assume one-step synapses)")
    gain, lag = _gains(cell, hidden)
    w_rec = cell.recurrent_weights().detach()
    w_mod = w_rec if labels is None else type_averaged(w_rec, labels)  # labels=None: true weights (tests)
    if sender == "exact":
        u = hidden.z - hidden.z.detach()
    else:  # modprop: credit reaches v_{k-lag} scaled by mu instead of the exact activation derivative
        v_src = hidden.v if lag == 0 else torch.cat([torch.zeros_like(hidden.v[:1]), hidden.v[:-1]])
        u = mu * (v_src - v_src.detach())
    T = u.shape[0]
    drive = ((1.0 - cell.alpha) * (u @ w_mod)).unbind(0)  # the injection's share of every step, one matmul
    if taps is None:
        zeta = [torch.zeros_like(u[0])] * (lag + 1)
        if mu is None:  # exact, time-varying intermediate gains (the BPTT identity)
            for k in range(1, T):
                hop = (1.0 - cell.alpha) * (gain[k - 1] * zeta[-1 - lag]) @ w_mod
                zeta.append(cell.alpha * zeta[-1] + hop + drive[k - 1])
        elif lag == 0:  # zeta_k = zeta_{k-1} (alpha I + (1 - alpha) mu W_mod) + drive_{k-1}
            eye = torch.eye(w_mod.shape[0], dtype=w_mod.dtype, device=w_mod.device)
            propagate = cell.alpha * eye + (1.0 - cell.alpha) * mu * w_mod
            for k in range(1, T):
                zeta.append(torch.addmm(drive[k - 1], zeta[-1], propagate))
        else:
            hop = (1.0 - cell.alpha) * mu * w_mod
            for k in range(1, T):
                zeta.append(torch.addmm(drive[k - 1] + cell.alpha * zeta[-1], zeta[-1 - lag], hop))
        zeta = torch.stack(zeta[lag:])  # zeta_0 .. zeta_{T-1}
    else:
        zeta = torch.zeros_like(u)
        for s, kernel in enumerate(_impulse_response(cell.alpha, w_mod, mu or 0.0, lag, taps), start=1):
            if s < T:
                zeta[s:] = zeta[s:] + u[:-s] @ kernel
    shifted = zeta if lag == 0 else torch.cat([torch.zeros_like(zeta[:1]), zeta[:-1]])
    return gain * shifted


def make_rule(name, cell=None, *, feedback="symmetric", n_out=None, seed=0, mu=None, n_types=1, taps=None):
    """A training-time credit rule by name (``bptt``, ``eprop``, ``mdgl``, ``modprop``).

    ``feedback``: ``"symmetric"`` (the readout weights) or ``"random"`` (a fixed N(0, 1/n) matrix drawn with
    ``seed``; needs ``n_out``). ``mu`` (> 0): modprop's activation-derivative constant. ``n_types``: cell types
    of ``W_ab``, a number of contiguous groups or labels ``(n,)`` (e.g. ``(signs > 0).long()`` for E/I).
    ``taps``: modprop's number of temporal filter taps (``None``: all lags; 0: e-prop).
    """
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; valid rules: {', '.join(RULES)}")
    if feedback not in ("symmetric", "random"):
        raise ValueError(f"feedback must be 'symmetric' or 'random', got {feedback!r}")
    if name == "bptt":
        return Rule("bptt")
    if cell is None:
        raise ValueError(f"{name} needs the cell")
    readout = matrix = None
    if feedback == "random":
        if n_out is None:
            raise ValueError("random feedback needs n_out")
        matrix = torch.randn(cell.n, n_out, generator=torch.Generator().manual_seed(seed)) / cell.n ** 0.5
        readout = lambda psp, w_out: FeedbackMatmul.apply(psp, w_out, matrix.to(psp.device, psp.dtype))  # noqa: E731
    if name == "eprop":
        return Rule(f"eprop-{feedback}", recurrent=_cut_presynaptic, readout=readout, feedback=matrix)
    labels = type_labels(cell.n, n_types)
    if name == "mdgl":
        def side(c, hidden):
            return _shadow(c, hidden, labels=labels, mu=None, taps=1, sender="exact")
    else:
        if mu is None or isinstance(mu, bool) or not mu > 0:
            raise ValueError(f"mu must be a positive number, got {mu!r}")
        if taps is not None and (int(taps) != taps or taps < 0):
            raise ValueError(f"taps must be a non-negative integer or None (all lags), got {taps!r}")

        def side(c, hidden):
            return _shadow(c, hidden, labels=labels, mu=float(mu), taps=taps, sender="mu")
    return Rule(name, recurrent=_cut_presynaptic, side=side, readout=readout, feedback=matrix)
