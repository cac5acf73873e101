r"""Fused time loops: a whole sequence of a spiking or rate layer as one ``autograd.Function`` with hand-written BPTT.

The plain path (:mod:`rnnnotes.functional`, one autograd node per operation and step) dispatches about 130 ops
per step and saves its intermediates. Here the forward writes each step straight into the output tensors and
saves only them (plus the refractory mask); the backward runs the adjoint recursion of the same equations step
by step and forms the weight gradient as one ``(n x TB) @ (TB x n)`` matmul per synaptic delay. With synaptic
delays the spikes are written into a buffer ``(B, D + T, n)`` in which the ``D`` spikes a step's drive reads,
:math:`z_{t-D}, \dots, z_{t-1}`, form one ``(B, D n)`` matrix (a view, never a copy), so the recurrent current
:math:`\sum_d z_{t-1-d} W^{(d)}` is one matmul per step; the backward reads the drive gradients of steps
:math:`t, \dots, t + D - 1` the same way.

The values and derivatives (pseudo-derivative included) are those of the plain path, up to floating-point
rounding. A backward pass that is itself differentiated (double backward, as in Hessian-vector products) runs,
for the rate loop, as a Function with a hand-written adjoint; the spiking loop and e-prop's cut rate loop rerun
the sequence on the plain path and differentiate that (:func:`differentiable_backward`). The rate loop lives in
:mod:`rnnnotes.fused_rate`; under ``vmap`` it runs in a batched form (a leading seed dimension:
:mod:`rnnnotes.seeds`); other ``torch.func`` transforms, ``vmap`` of a spiking layer and forward-mode AD take the
plain path (:func:`choose`). ``fast=False`` on a call, :func:`disabled` around code, or ``RNNNOTES_FAST=0`` in the
environment switch the fused path off. On the CPU the spiking loops' steps run compiled (:mod:`rnnnotes.native`,
unless ``RNNNOTES_NATIVE=0``); on CUDA the loops are replayed from CUDA graphs in training (:func:`run_sequence`).
The readout's low-pass filter has its fused form beside the readout (:class:`rnnnotes.model.LowPass`).
"""
import contextlib
import os
import warnings
from typing import NamedTuple

import torch
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from . import native
from .functional import cut_presynaptic, recurrent_input

_switch = {"on": True, "graphs": True}


@contextlib.contextmanager
def disabled():
    """Within this block every cell takes its plain path (e.g. for second derivatives)."""
    before, _switch["on"] = _switch["on"], False
    try:
        yield
    finally:
        _switch["on"] = before


@contextlib.contextmanager
def without_graphs():
    """Within this block the fused loops run without CUDA graphs, whose backward can be differentiated only once
    (for second derivatives: :func:`rnnnotes.hessian.hvp`)."""
    before, _switch["graphs"] = _switch["graphs"], False
    try:
        yield
    finally:
        _switch["graphs"] = before


def _transforms_allow(vmappable):
    """Whether the active ``torch.func`` transforms (if any) are ones the fused loop supports: none, or only
    ``vmap`` for a loop that has a batched form."""
    if not torch._C._are_functorch_transforms_active():
        return True
    return vmappable and all(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


def choose(fast, recurrent, tensors, *, vmappable=False):
    """``None`` for the plain path, else whether the recurrence is cut (e-prop's ``cut_presynaptic``).

    ``fast=None`` picks the fused path unless it is switched off (``RNNNOTES_FAST=0``, :func:`disabled`), a
    ``torch.func`` transform other than ``vmap`` of a ``vmappable`` loop or forward-mode AD is active, or
    ``recurrent`` is a hook the fused path does not know; ``fast=True`` raises ``ValueError`` naming the reason
    instead of falling back; ``fast=False`` is the plain path.
    """
    if fast is False:
        return None
    reason = None
    if recurrent not in (None, recurrent_input, cut_presynaptic):
        reason = f"the recurrent hook {getattr(recurrent, '__name__', recurrent)!r} has no fused form"
    elif not _transforms_allow(vmappable):
        reason = "a torch.func transform is active"
    elif any(torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        reason = "forward-mode AD is active"
    elif fast is None and (not _switch["on"] or os.environ.get("RNNNOTES_FAST", "1") == "0"):
        return None
    if reason is None:
        return recurrent is cut_presynaptic
    if fast:
        raise ValueError(f"fast=True, but {reason}")
    return None


# --------------------------------------------------------------------------------------------------- spiking layer

class SpikingConstants(NamedTuple):
    """The step's numbers (see :func:`rnnnotes.functional.alif_step`); ``adaptive=False`` is the LIF step."""

    alpha: float
    rho: float
    thr: float
    dt: float
    gamma: float
    n_ref: int
    n_delay: int
    adaptive: bool
    cut: bool
    positive: bool  # thresholds stay positive (thr > 0, beta >= 0, b >= 0), so (v - A) / A > 0 is v > A


def _delay_window(w_stack, n_delay, adjoint=False):
    """``(D n, n)``: the weights that act on the window ``[z_{t-D}, ..., z_{t-1}]`` of a step's drive (block
    ``j``: delay ``D - 1 - j``), or with ``adjoint`` on ``[delta_t, ..., delta_{t+D-1}]`` (block ``d``: ``W^(d)``
    transposed)."""
    n = w_stack.shape[1]
    blocks = w_stack.view(n_delay, n, n)
    return (blocks.transpose(1, 2) if adjoint else blocks.flip(0)).reshape(n_delay * n, n)


def _spiking_forward(current, w_stack, v, z, b, ref, presynaptic, beta, k):
    """The LSNN step of :func:`rnnnotes.functional.alif_step` over all steps; returns ``Z, V, A`` and the mask of
    steps on which a neuron may spike (``None`` without refractoriness)."""
    T, B, n = current.shape
    V, A = current.new_empty(T, B, n), current.new_empty(T, B, n)
    if not k.adaptive:
        A.fill_(k.thr)
    last_spike = ref - (k.n_ref + 1)  # refractory counter as a time: a neuron may spike at t iff <= t - 1 - n_ref
    if k.n_delay == 1:
        Z = current.new_empty(T, B, n)
    else:  # history[:, j] = z_{j - D}: Z[t] is history[:, D + t], and step t's window history[:, t:t + D]
        history = current.new_empty(B, k.n_delay + T, n)
        history[:, :k.n_delay] = presynaptic.view(B, k.n_delay, n).flip(1)
        Z, window = history[:, k.n_delay:].transpose(0, 1), _delay_window(w_stack, k.n_delay)
    allowed = torch.empty(T, B, n, dtype=torch.bool, device=current.device) if k.n_ref else None
    loops = native.spiking_loops(current)
    if loops is not None:  # last spike times rounded up: the same test against whole step numbers, exact updates
        loops.forward(native.rows(current), w_stack if k.n_delay == 1 else window, native.rows(v), native.rows(z), b,
                      last_spike.to(current).ceil(), beta.contiguous(), V, A, Z,
                      None if k.n_delay == 1 else history, allowed, k.alpha, k.rho, k.thr, k.dt, k.n_ref, k.n_delay,
                      k.adaptive, k.positive)
        return Z, V, A, allowed
    thr = current.new_full((), k.thr)
    for t in range(T):
        a = A[t]
        if k.adaptive:
            b = torch.lerp(z, b, k.rho)
            torch.addcmul(thr, b, beta, out=a)
        if k.n_delay == 1:
            drive = torch.addmm(current[t], z, w_stack)
        else:
            drive = torch.addmm(current[t], history[:, t:t + k.n_delay].reshape(B, -1), window)
        torch.lerp(drive, v, k.alpha, out=V[t]).addcmul_(z, a, value=-k.dt)
        scaled = (v, a) if k.positive else ((v - a) / a, 0)
        if k.n_ref:
            spikes = torch.gt(*scaled).logical_and_(torch.le(last_spike, t - 1 - k.n_ref, out=allowed[t]))
            last_spike.masked_fill_(spikes, t)
            Z[t].copy_(spikes)
        else:
            torch.gt(*scaled, out=Z[t])
        if k.dt != 1.0:
            Z[t].div_(k.dt)
        v, z = V[t], Z[t]
    return Z, V, A, allowed


def _weight_gradient(Z, presynaptic, grad_drive, n_delay):
    r"""``(D n, n)``: :math:`\partial L / \partial W^{(d)} = \sum_t z_{t-1-d}^T \delta_t`, per delay one matmul
    over the steps ``t > d`` (spikes of the sequence) and one over the first ``d + 1`` (the initial history)."""
    T, B, n = Z.shape
    history = presynaptic.view(B, n_delay, n).transpose(0, 1)  # z_{-1}, ..., z_{-D}
    blocks = []
    for d in range(n_delay):
        early = min(d + 1, T)  # steps whose z_{t-1-d} is z_{-1-d+t} of the history
        spikes = history[d - early + 1:d + 1].flip(0).reshape(early * B, n)
        block = spikes.T @ grad_drive[:early].reshape(early * B, n)
        if T > early:
            block.addmm_(Z[:T - early].reshape(-1, n).T, grad_drive[early:].reshape(-1, n))
        blocks.append(block)
    return torch.cat(blocks)


class _Grads(NamedTuple):
    """The gradients of the outputs ``Z, V, A`` (``None`` where unused) and the per-neuron ``beta``."""

    z: torch.Tensor
    v: torch.Tensor
    a: torch.Tensor
    beta: torch.Tensor


def _sensitivities(Z, V, A, allowed, v0, k):
    r"""For all steps at once, ``P = dz_t / dv_{t-1}`` and ``R = -dz_t / dA_t`` (zero while refractory):
    :math:`P = \gamma \max(0, 1 - |u_t|) / (A_t\, dt)`, :math:`R = P (u_t + 1)`, :math:`u_t = (v_{t-1} - A_t)/A_t`."""
    u = torch.cat([v0.unsqueeze(0), V[:-1]]).sub_(A).div_(A)
    P = (1.0 - u.abs()).clamp_(min=0.0).mul_(k.gamma / k.dt).div_(A)
    if allowed is not None:
        P.mul_(allowed)
    return P, (u.add_(1.0).mul_(P) if k.adaptive else None)


def _backward_steps(grads, Z, V, A, allowed, v0, z0, G, later, w_back, k):
    r"""The adjoint recursion of :func:`_spiking_forward`, step by step from the last: fills ``G`` and returns the
    gradients of the initial ``v``, ``z`` and ``b``."""
    T, B, n = Z.shape
    dv0, dz, db = v0.new_empty(B, n), v0.new_zeros(B, n), v0.new_zeros(B, n)
    loops = native.spiking_loops(Z)
    if loops is not None:
        loops.backward(V, A, Z, allowed, native.rows(v0), native.rows(z0), G, later, w_back, *map(native.rows, grads),
                       dv0, dz, db, k.alpha, k.rho, k.thr, k.dt, k.gamma, k.n_delay, k.adaptive, k.cut)
        return dv0, dz, db
    P, R = _sensitivities(Z, V, A, allowed, v0, k)
    for t in range(T - 1, -1, -1):
        g_v, g_z = G[t], dz if grads.z is None else dz.add_(grads.z[t])
        if grads.v is not None:
            g_v.add_(grads.v[t])
        z_prev = Z[t - 1] if t else z0
        if k.adaptive:  # -d L / d A_t, then d L / d b_t
            minus_d_a = torch.mul(g_z, R[t]).addcmul_(g_v, z_prev, value=k.dt)
            if grads.a is not None:  # the threshold's own output gradient
                db = torch.addcmul(db, grads.a[t], grads.beta)
            db = torch.addcmul(db, minus_d_a, grads.beta, value=-1.0)
            dz = torch.mul(db, 1.0 - k.rho).addcmul_(g_v, A[t], value=-k.dt)
            db.mul_(k.rho)
        else:
            dz = torch.mul(g_v, -k.thr * k.dt)
        torch.mul(g_z, P[t], out=G[t - 1] if t else dv0)
        if k.alpha:
            (G[t - 1] if t else dv0).add_(g_v, alpha=k.alpha)
        if k.n_delay == 1 and not k.cut:
            dz.addmm_(g_v, w_back)
        elif not k.cut:  # z_{t-1} feeds the drive of step t + d through W^(d); e-prop cuts this path
            dz.addmm_(later[:, t:t + k.n_delay].reshape(B, -1), w_back)
    return dv0, dz, db


def _spiking_backward(grads, saved, w_stack, presynaptic, k):
    r"""BPTT through :func:`_spiking_forward`: the gradients of the drive ``I_t + r_t``, the stacked weights and the
    initial ``v``, ``z``, ``b`` and spike history. ``G[t]`` accumulates :math:`\partial L / \partial v_t`."""
    Z, V, A, allowed, v0, z0 = saved
    T, B, n = Z.shape
    # d drive_t / d v_t = 1 - alpha folded into the weights; with delays, G[t] is later[:, t] and the window of the
    # drive gradients that reach z_{t-1}, steps t .. t + D - 1, is later[:, t:t + D] (zero past the last step)
    w_back = (w_stack.T if k.n_delay == 1 else _delay_window(w_stack, k.n_delay, adjoint=True)) * (1.0 - k.alpha)
    later = None
    if k.n_delay == 1:
        G = torch.empty_like(Z)
        G[-1].zero_()
    else:
        later = Z.new_empty(B, T + k.n_delay - 1, n)
        later[:, T - 1:].zero_()
        G = later[:, :T].transpose(0, 1)
    dv0, dz, db = _backward_steps(grads, Z, V, A, allowed, v0, z0, G, later, w_back, k)
    # z_{-1-lag} of the initial history reaches the drives of steps 0 .. D - 1 - lag through W^(lag), ..., W^(D-1)
    grad_history = torch.cat([torch.zeros_like(v0) if k.cut else later[:, :k.n_delay - lag].reshape(B, -1)
                              @ w_back[lag * n:] for lag in range(1, k.n_delay)] or [presynaptic[:, :0]], dim=1)
    drive = G.mul_(1.0 - k.alpha)
    return drive, _weight_gradient(Z, presynaptic, drive, k.n_delay), dv0, dz, db, grad_history


def differentiable_backward(plain, inputs, outputs_grads):
    """Gradients of ``plain(*inputs)`` (the plain path) by autograd with ``create_graph``: what a fused backward
    does when it is itself differentiated (a Hessian-vector product by double backward)."""
    with torch.enable_grad():
        outputs = plain(*inputs)
        pairs = [(o, g) for o, g in zip(outputs, outputs_grads) if g is not None and o.requires_grad]
        wanted = [i for i in inputs if torch.is_tensor(i) and i.requires_grad]
        found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], create_graph=True,
                                         allow_unused=True)) if pairs else iter([None] * len(wanted))
    return tuple(next(found) if torch.is_tensor(i) and i.requires_grad else None for i in inputs)


class SpikingSequence(torch.autograd.Function):
    """``(Z, V, A)`` of a LIF/ALIF layer over a whole sequence; see the module docstring. ``plain(current,
    w_stack, v0, z0, b0, ref0, history0, beta, k)`` is the same map on the plain path (for second derivatives)."""

    @staticmethod
    def forward(ctx, current, w_stack, v0, z0, b0, ref0, history0, beta, k, plain):
        ctx.set_materialize_grads(False)
        presynaptic = torch.cat([z0, history0], dim=1)
        Z, V, A, allowed = _spiking_forward(current, w_stack, v0, z0, b0, ref0, presynaptic, beta, k)
        ctx.save_for_backward(Z, V, A, current, w_stack, v0, z0, b0, ref0, history0, beta)
        ctx.allowed, ctx.k, ctx.plain = allowed, k, plain
        return Z, V, A

    @staticmethod
    def backward(ctx, grad_z, grad_v, grad_a):
        Z, V, A, *inputs = ctx.saved_tensors
        if torch.is_grad_enabled():
            return differentiable_backward(ctx.plain, (*inputs, ctx.k), (grad_z, grad_v, grad_a)) + (None,)
        current, w_stack, v0, z0, b0, ref0, history0, beta = inputs
        grads = _Grads(grad_z, grad_v, grad_a, beta)
        presynaptic = torch.cat([z0, history0], dim=1)
        drive, grad_w, dv0, dz0, db0, dhistory = _spiking_backward(grads, (Z, V, A, ctx.allowed, v0, z0), w_stack,
                                                                    presynaptic, ctx.k)
        return drive, grad_w, dv0, dz0, db0, None, dhistory, None, None, None


def spiking_sequence(current, w_stack, state, params, plain, *, adaptive, cut, graphs=None):
    """``(z, v, threshold)`` of the LSNN step run from ``state`` on ``current (T, B, n)``; ``params`` is an
    ALIF/LIF params object (``beta`` a per-neuron tensor for ALIF), ``plain`` the same map on the plain path,
    ``graphs`` a dict in which CUDA graphs are kept (:func:`run_sequence`)."""
    n_delay = w_stack.shape[0] // w_stack.shape[1]
    positive = not adaptive or bool((state.b.min() >= 0) & (state.z.min() >= 0))
    k = SpikingConstants(alpha=params.alpha, rho=params.rho if adaptive else 0.0, thr=float(params.thr),
                         dt=float(params.dt), gamma=float(params.gamma), n_ref=int(params.n_ref), n_delay=n_delay,
                         adaptive=adaptive, cut=cut, positive=positive)
    beta = params.beta.to(current) if adaptive else current.new_zeros(current.shape[-1])
    args = (current, w_stack, state.v, state.z, state.b, state.ref, state.history, beta)
    return run_sequence(lambda *a: SpikingSequence.apply(*a, k, plain), args, k, graphs)


# ------------------------------------------------------------------------------------------------------ CUDA graphs

def run_sequence(sequence, args, constants, graphs):
    """``sequence(*args)``; in training on CUDA (unless ``RNNNOTES_CUDA_GRAPHS=0``, under :func:`without_graphs` or
    under ``vmap``) replayed from CUDA graphs of its forward and backward loops, captured on the first call with
    these shapes, dtypes, gradient flags and ``constants`` and kept in ``graphs``: one launch per loop instead of
    about ten per step. Outputs are cloned, since a replay overwrites the graph's own; a capture that fails falls
    back to the loop with a warning."""
    training = torch.is_grad_enabled() and any(a.requires_grad for a in args)
    if (graphs is None or not (args[0].is_cuda and training) or torch._C._are_functorch_transforms_active()
            or not _switch["graphs"] or os.environ.get("RNNNOTES_CUDA_GRAPHS", "1") == "0"):
        return sequence(*args)
    key = (constants, tuple((a.shape, a.dtype, a.requires_grad) for a in args))
    if key not in graphs:
        samples = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
        try:
            graphs[key] = torch.cuda.make_graphed_callables(sequence, samples, allow_unused_input=True)
        except RuntimeError as error:
            warnings.warn(f"CUDA graph capture failed, the fused loop runs without graphs: {error}")
            graphs[key] = sequence
    return tuple(o.clone() for o in graphs[key](*args))
