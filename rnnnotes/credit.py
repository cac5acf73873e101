r"""Credit assignment rules: how gradients flow back through time in *training*; forward values never change.

A rule is three optional hooks that ``model.Network`` threads into the forward pass:

- ``recurrent(state, w_rec)`` replaces the recurrent current ``z_{t-1} W_rec``;
- ``side(cell, hidden, state=None)`` returns a zero-valued term added to the readout input, which carries non-local
  credit (``state``: the state the run started from, None for the cell's initial state);
- ``readout(psp, w_out)`` replaces the readout matmul (random feedback).

Rules (Bellec et al. 2020; Liu et al. 2021, 2022):

- ``bptt``: exact gradients.
- ``eprop``: :math:`\partial z_{t-1} / \partial (z_{t-1} W_{rec})` is cut, so credit reaches a synapse only through
  its own neuron's dynamics (eligibility trace) times the learning signal :math:`\partial E / \partial z_t` from the
  readout, with symmetric (:math:`W_{out}`) or fixed random feedback.
- ``mdgl``: e-prop plus one recurrent hop of credit through cell-type-averaged weights :math:`W_{ab}`:
  :math:`L_{t,p} = \partial E/\partial z_{t,p} + \sum_j W_{ab}[p, j]\, \psi_{t+1,j} (1-\alpha)\,
  \partial E/\partial z_{t+1,j}`, as the paper states it (Liu et al. 2021; the released code uses the true
  :math:`W_{rec}` here).
- ``modprop``: the paper's ModProp (Liu et al. 2022): e-prop plus credit through :math:`W_{mod} = W_{ab}` over
  ``taps`` time lags (all lags when ``taps=None``), with the activation derivative of every intermediate neuron
  replaced by the constant ``mu``; exact derivatives stay where the loss enters and in the eligibility traces.
- ``modprop_true_w``: what the released ModProp code computes (``compute_gradients_with_rewiring_variables_mprop``
  reads the recurrent weights from before the :math:`W_{ab}` swap): the same recursion with :math:`W_{mod} =
  W_{rec}`, the true cell-specific weights; for rate cells this is BPTT with :math:`\phi'(v_{t-1})` of every
  recurrent hop :math:`z_{t-1} W_{rec}` replaced by ``mu``. ``n_types`` is accepted and ignored (not even
  checked), so one config can name any rule.

The non-local credit is one linear "shadow" recursion of the influence of a neuron's activity on later membrane
potentials: :math:`\zeta_k = \alpha \zeta_{k-1} + (1-\alpha)\, y_{k-1} W_{mod}` with :math:`y_k = u_k + c_k \odot
\zeta_{k-\ell}`, read out as :math:`g_k \odot \zeta_{k-\ell}`, where :math:`u` is a zero-valued injection whose
gradient reaches the sender, :math:`c` the intermediate gain (``mu`` or exact), :math:`g` the exact gain
:math:`\partial z_k / \partial v_{k-\ell}` and :math:`\ell` the cell's spike lag (0 for rate cells, 1 for the LSNN
step order). With exact gains and :math:`W_{mod} = W_{rec}` it reproduces BPTT for rate networks exactly.
"""
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch

from .functional import apply, cut_presynaptic
from .seeding import generator

RULES = ("bptt", "eprop", "mdgl", "modprop", "modprop_true_w")
# the rules as the notebooks name them: (rule, feedback of the learning signal)
VARIANTS = {"bptt": ("bptt", "symmetric"), "eprop": ("eprop", "symmetric"), "eprop_random": ("eprop", "random"),
            "mdgl": ("mdgl", "symmetric"), "modprop": ("modprop", "symmetric"),
            "modprop_true_w": ("modprop_true_w", "symmetric")}


def variant(name):
    """``(rule, feedback)`` of a rule variant's name (:data:`VARIANTS`, e.g. ``"eprop_random"``)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown rule variant {name!r}; valid: {', '.join(VARIANTS)}")
    return VARIANTS[name]


class Rule(NamedTuple):
    name: str
    recurrent: Optional[Callable] = None
    side: Optional[Callable] = None
    readout: Optional[Callable] = None
    feedback: Optional[torch.Tensor] = None  # the fixed random feedback matrix (n, n_out), if any


class FeedbackMatmul(torch.autograd.Function):
    """``psp @ w_out`` whose backward sends the error to ``psp`` through a fixed matrix ``feedback`` instead.

    Forward-mode derivatives (``jvp``) are those of the plain product: the swap is a property of the backward only.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(psp, w_out, feedback):
        return psp @ w_out

    @staticmethod
    def setup_context(ctx, inputs, output):
        psp, w_out, feedback = inputs
        ctx.save_for_backward(psp, feedback)
        ctx.save_for_forward(psp, w_out)

    @staticmethod
    def backward(ctx, grad):
        psp, feedback = ctx.saved_tensors
        grad_w = (psp.reshape(-1, psp.shape[-1]).T @ grad.reshape(-1, grad.shape[-1]))
        return grad @ feedback.T, grad_w, None

    @staticmethod
    def jvp(ctx, psp_dot, w_out_dot, _feedback_dot):
        psp, w_out = ctx.saved_tensors
        out = torch.zeros(psp.shape[:-1] + w_out.shape[-1:], dtype=psp.dtype, device=psp.device)
        if psp_dot is not None:
            out = out + psp_dot @ w_out
        if w_out_dot is not None:
            out = out + psp @ w_out_dot
        return out


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
    one_hot = torch.nn.functional.one_hot(labels.to(w.device), n_types).to(w.dtype)  # (n, K)
    counts = one_hot.sum(0)
    block_mean = one_hot.T @ w @ one_hot / torch.outer(counts, counts)
    return one_hot @ block_mean @ one_hot.T


def _delayed(x, lag):
    """``x`` shifted ``lag`` steps later along time (zeros first)."""
    return x if lag == 0 else torch.cat([torch.zeros_like(x[:lag]), x[:-lag]])


# ------------------------------------------------------------------------------ the shadow recursion's pieces
# A sender makes the zero-valued injection u (T, B, n); a propagation turns it into zeta (T, B, n).

def exact_sender(hidden, lag):
    """``u = z - stop_grad(z)``: credit reaches the sender through its exact activation derivative (MDGL)."""
    return hidden.z - hidden.z.detach()


def mu_sender(mu):
    """``u = mu (v_{k-lag} - stop_grad(v_{k-lag}))``: credit reaches the sender's potential scaled by ``mu``."""
    def sender(hidden, lag):
        v_src = _delayed(hidden.v, lag)
        return mu * (v_src - v_src.detach())
    return sender


def exact_propagation(u, gain, w_mod, alpha, lag):
    r"""All lags with the exact, time-varying intermediate gains:
    :math:`\zeta_k = \alpha \zeta_{k-1} + (1-\alpha)(g_{k-1} \zeta_{k-1-\ell} + u_{k-1}) W_{mod}`.
    With :math:`W_{mod} = W_{rec}` this is BPTT (the identity the tests check)."""
    drive = ((1.0 - alpha) * (u @ w_mod)).unbind(0)
    zeta = [torch.zeros_like(u[0])] * (lag + 1)
    for k in range(1, u.shape[0]):
        hop = (1.0 - alpha) * (gain[k - 1] * zeta[-1 - lag]) @ w_mod
        zeta.append(alpha * zeta[-1] + hop + drive[k - 1])
    return torch.stack(zeta[lag:])


def iir_propagation(mu):
    r"""All lags with the constant intermediate gain ``mu`` (ModProp, ``taps=None``):
    :math:`\zeta_k = \alpha \zeta_{k-1} + (1-\alpha)(\mu \zeta_{k-1-\ell} + u_{k-1}) W_{mod}`."""
    def propagate(u, gain, w_mod, alpha, lag):
        drive = ((1.0 - alpha) * (u @ w_mod)).unbind(0)
        zeta = [torch.zeros_like(u[0])] * (lag + 1)
        if lag == 0:  # zeta_k = zeta_{k-1} (alpha I + (1 - alpha) mu W_mod) + drive_{k-1}
            eye = torch.eye(w_mod.shape[0], dtype=w_mod.dtype, device=w_mod.device)
            step = alpha * eye + (1.0 - alpha) * mu * w_mod
            for k in range(1, u.shape[0]):
                zeta.append(torch.addmm(drive[k - 1], zeta[-1], step))
        else:
            hop = (1.0 - alpha) * mu * w_mod
            for k in range(1, u.shape[0]):
                zeta.append(torch.addmm(drive[k - 1] + alpha * zeta[-1], zeta[-1 - lag], hop))
        return torch.stack(zeta[lag:])
    return propagate


def impulse_response(alpha, w_mod, mu, lag, taps):
    """FIR taps ``K_s`` (s = 1..taps) of the shadow recursion with constant intermediate gain ``mu``."""
    eye = torch.eye(w_mod.shape[0], dtype=w_mod.dtype, device=w_mod.device)
    zeta = [torch.zeros_like(eye) for _ in range(lag + 1)]  # zeta_{k-1-lag} ... zeta_{k-1} of an impulse at 0
    kernels = []
    for s in range(1, taps + 1):
        y_prev = (eye if s == 1 else 0.0) + mu * zeta[-1 - lag]
        zeta.append(alpha * zeta[-1] + (1.0 - alpha) * y_prev @ w_mod)
        kernels.append(zeta[-1])
    return kernels


def fir_propagation(taps, mu):
    r"""``taps`` lags through the impulse response of :func:`iir_propagation`:
    :math:`\zeta_k = \sum_{s=1}^{taps} u_{k-s} K_s` (MDGL: one tap with ``mu = 0``)."""
    def propagate(u, gain, w_mod, alpha, lag):
        zeta = torch.zeros_like(u)
        for s, kernel in enumerate(impulse_response(alpha, w_mod, mu, lag, taps), start=1):
            if s < u.shape[0]:
                zeta[s:] = zeta[s:] + u[:-s] @ kernel
        return zeta
    return propagate


def shadow_term(cell, hidden, state=None, *, labels, sender, propagate):
    """The zero-valued readout term carrying non-local credit: ``g_k * zeta_{k-lag}`` (module docstring), with the
    cell's own gains (``cell.gains`` of the run from ``state``) and ``W_mod`` the type-averaged recurrent weights
    (``labels=None``: the true weights, as in ``modprop_true_w``)."""
    if cell.n_delay != 1:
        raise ValueError(f"mdgl and modprop rules need n_delay = 1 (credit hops assume one-step synapses), "
                         f"got n_delay={cell.n_delay}")
    gain, lag = cell.gains(hidden, state)
    w_rec = cell.recurrent_weights().detach()
    w_mod = w_rec if labels is None else type_averaged(w_rec, labels)
    zeta = propagate(sender(hidden, lag), gain, w_mod, cell.alpha, lag)
    return gain * _delayed(zeta, lag)


@dataclass(frozen=True)
class RuleOptions:
    """Options of :func:`make_rule`. ``feedback``: ``"symmetric"`` (the readout weights) or ``"random"`` (a fixed
    N(0, 1/n) matrix from the stream ``(seed, "feedback")``). ``mu`` (> 0): ModProp's activation-derivative
    constant. ``n_types``: cell types of ``W_ab``, a number of contiguous groups or labels ``(n,)`` (e.g.
    ``(signs > 0).long()`` for E/I). ``taps``: ModProp's number of temporal filter taps (``None``: all lags;
    0: e-prop)."""

    feedback: str = "symmetric"
    seed: int = 0
    mu: Optional[float] = None
    n_types: object = 1
    taps: Optional[int] = None

    def __post_init__(self):
        if self.feedback not in ("symmetric", "random"):
            raise ValueError(f"feedback must be 'symmetric' or 'random', got {self.feedback!r}")
        if self.taps is not None and (int(self.taps) != self.taps or self.taps < 0):
            raise ValueError(f"taps must be a non-negative integer or None (all lags), got {self.taps!r}")

    def require_mu(self):
        if self.mu is None or isinstance(self.mu, bool) or not self.mu > 0:
            raise ValueError(f"mu must be a positive number, got {self.mu!r}")
        return float(self.mu)


def _random_feedback(cell, n_out, seed):
    """The fixed feedback matrix ``(n, n_out) ~ N(0, 1/n)`` and the readout hook that uses it."""
    if n_out is None:
        raise ValueError("random feedback needs n_out")
    matrix = torch.randn(cell.n, n_out, generator=generator(seed, "feedback")) / cell.n ** 0.5
    return matrix, feedback_readout(matrix)


def feedback_readout(matrix):
    """The readout hook ``psp @ w_out`` whose backward sends the error through the fixed ``matrix (n, n_out)``."""
    def readout(psp, w_out):
        return apply(FeedbackMatmul, psp, w_out, matrix.to(psp.device, psp.dtype))
    return readout


def make_rule(name, cell=None, *, n_out=None, **options):
    """A training-time credit rule by name (one of :data:`RULES`); ``options`` are the fields of
    :class:`RuleOptions` (``feedback``, ``seed``, ``mu``, ``n_types``, ``taps``). Random feedback needs ``n_out``,
    the readout's width."""
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; valid rules: {', '.join(RULES)}")
    opts = RuleOptions(**options)
    if name == "bptt":
        return Rule("bptt")
    if cell is None:
        raise ValueError(f"{name} needs the cell")
    matrix, readout = _random_feedback(cell, n_out, opts.seed) if opts.feedback == "random" else (None, None)
    if name == "eprop":
        return Rule(f"eprop-{opts.feedback}", recurrent=cut_presynaptic, readout=readout, feedback=matrix)
    labels = None if name == "modprop_true_w" else type_labels(cell.n, opts.n_types)
    if name == "mdgl":
        sender, propagate = exact_sender, fir_propagation(1, 0.0)
    else:
        mu = opts.require_mu()
        sender = mu_sender(mu)
        propagate = iir_propagation(mu) if opts.taps is None else fir_propagation(int(opts.taps), mu)

    def side(c, hidden, state=None):
        return shadow_term(c, hidden, state, labels=labels, sender=sender, propagate=propagate)
    return Rule(name, recurrent=cut_presynaptic, side=side, readout=readout, feedback=matrix)
