r"""The fused rate loop (:mod:`rnnnotes.fused` has the spiking loop and what both share): ``RateSequence``, a whole
sequence of :func:`rnnnotes.functional.rate_step` as one ``autograd.Function`` with hand-written BPTT and a batched
form for ``vmap`` over seeds, and ``RateBackward``, that BPTT pass as a Function of its own whose backward is also
written by hand, so a Hessian-vector product by double backward runs on fused loops too.

The fused backward (:func:`_rate_backward`) maps the output gradients :math:`g^z, g^v` to
:math:`G_t = \partial L / \partial v_t` by

.. math:: G_t = g^v_t + \alpha G_{t+1} + \psi_t \odot (g^z_t + c\, G_{t+1} W^T), \qquad c = 1 - \alpha,
          \quad \psi_t = \phi'(v_t),

and returns the drive gradient :math:`D_t = c\, G_t`, :math:`\partial L / \partial W = \sum_t z_{t-1}^T D_t`,
:math:`\alpha G_0` and :math:`D_0 W^T`. For cotangents :math:`\bar D, \bar W, \bar v_0, \bar z_0` of these four,
the source :math:`s_t = c(\bar D_t + z_{t-1} \bar W) + [t = 0](\alpha \bar v_0 + c\, \bar z_0 W)` drives the
adjoint of the recursion forward in time,

.. math:: H_0 = s_0, \qquad H_t = s_t + \alpha H_{t-1} + c\, (\psi_{t-1} \odot H_{t-1}) W,

and then :math:`\partial/\partial g^v = H`, :math:`\partial/\partial g^z = \psi \odot H`, :math:`\partial/\partial
\psi_t = H_t \odot (g^z_t + D_{t+1} W^T)` (for tanh units :math:`\psi = 1 - z^2` is read off the saved rates, so
this reaches :math:`z_t` as :math:`-2 z_t` times it; ReLU and linear units have :math:`\phi'' = 0`),
:math:`\partial/\partial z_t = D_{t+1} \bar W^T`, :math:`\partial/\partial z_0 = D_0 \bar W^T` and
:math:`\partial/\partial W = \sum_t (\psi_t \odot H_t)^T D_{t+1} + \bar z_0^T D_0`. Autograd carries
the gradients of :math:`Z` and :math:`V` on through the fused loop's own backward.
"""
from typing import NamedTuple

import torch

from .functional import ACTIVATION_FUNCTIONS, activation_gain, apply
from .fused import differentiable_backward, run_sequence


class RateConstants(NamedTuple):
    alpha: float
    activation: str
    cut: bool


def _matmul_add(c, a, b):
    """``c + a @ b`` for matrices, or for stacks of them with a leading seed dimension."""
    return torch.addmm(c, a, b) if b.dim() == 2 else torch.baddbmm(c, a, b)


def _matmul(a, b):
    """``a @ b`` for matrices or stacks of them, without ``matmul``'s reshapes around a batched product."""
    return torch.mm(a, b) if b.dim() == 2 else torch.bmm(a, b)


_ACTIVATION_INTO = {  # phi(v) written into ``out``: one operation per step instead of phi and a copy
    "tanh": lambda v, out: torch.tanh(v, out=out),
    "relu": lambda v, out: torch.clamp_min(v, 0.0, out=out),
}


def _activation_into(activation):
    """``phi_into(v, out)``: ``out`` set to :math:`\\phi(v)` and returned."""
    phi = ACTIVATION_FUNCTIONS[activation][0]
    return _ACTIVATION_INTO.get(activation, lambda v, out: out.copy_(phi(v)))


def _rate_backward(grad_z, grad_v, Z, V, w, z0, k):
    """BPTT through the rate loop: the gradients of the drive (shaped like ``Z``), ``w`` and the initial ``v``,
    ``z``. Time is dimension 0, or 1 after a leading seed dimension (``w (S, n, n)``)."""
    gain, time = activation_gain(k.activation, V, Z), w.dim() - 2
    steps, G = Z.shape[time], torch.empty_like(Z)  # G[t] = d L / d v_t
    w_back = (w.transpose(-1, -2) * (1.0 - k.alpha)).contiguous()
    dv = dz = zeros = torch.zeros_like(z0)  # never written in place
    for t in range(steps - 1, -1, -1):
        g_z = dz if grad_z is None else grad_z.select(time, t) + dz
        g_v = torch.addcmul(dv if grad_v is None else grad_v.select(time, t) + dv, gain.select(time, t), g_z,
                            out=G.select(time, t))
        dv = g_v * k.alpha
        dz = zeros if k.cut else _matmul(g_v, w_back)
    drive = G.mul_(1.0 - k.alpha)
    earlier = Z.narrow(time, 0, steps - 1).flatten(time, time + 1).transpose(-1, -2)  # z_{t-1}, t >= 1
    grad_w = z0.transpose(-1, -2) @ drive.select(time, 0) + earlier @ drive.narrow(time, 1, steps - 1).flatten(
        time, time + 1)
    return drive, grad_w, dv, dz


class RateBackward(torch.autograd.Function):
    """``(drive, grad_w, dv0, dz0)`` of the fused rate loop's backward for output gradients ``grad_z``,
    ``grad_v`` (either may be ``None``), the saved outputs ``Z, V``, the weights ``w (n, n)`` and ``z0``."""

    @staticmethod
    def forward(grad_z, grad_v, Z, V, w, z0, k):
        return _rate_backward(grad_z, grad_v, Z, V, w, z0, k)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_z, grad_v, Z, V, w, z0, k = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad_z, Z, V, w, z0, output[0])
        ctx.k, ctx.given = k, (grad_z is not None, grad_v is not None)

    @staticmethod
    def backward(ctx, bar_drive, bar_w, bar_v0, bar_z0):
        grad_z, Z, V, w, z0, drive = ctx.saved_tensors
        alpha, c = ctx.k.alpha, 1.0 - ctx.k.alpha
        steps = Z.shape[0]
        source = None if bar_drive is None else bar_drive * c
        if bar_w is not None:
            reached = torch.cat([z0.unsqueeze(0), Z[:-1]]) @ (c * bar_w)  # c z_{t-1} W-bar
            source = reached if source is None else source + reached
        if source is None:
            source = torch.zeros_like(Z)
        if bar_v0 is not None:
            source[0] += alpha * bar_v0
        if bar_z0 is not None:
            source[0] += c * (bar_z0 @ w)
        psi, H = activation_gain(ctx.k.activation, V, Z), [source[0]]
        w_c = w * c
        for t in range(1, steps):  # no writes into a buffer: this backward stays differentiable by autograd
            H.append(torch.addmm(torch.add(source[t], H[-1], alpha=alpha), psi[t - 1] * H[-1], w_c))
        H = torch.stack(H)
        psi_h, dZ = psi * H, None
        if ctx.k.activation == "tanh":  # d/d psi_t, reaching z_t through psi = 1 - z^2 (phi'' = 0 for the others)
            later = torch.cat([drive[1:] @ w.T, torch.zeros_like(z0).unsqueeze(0)])  # D_{t+1} W^T, zero at the end
            dZ = (H * (later if grad_z is None else grad_z + later)).mul_(Z).mul_(-2.0)
        dW = psi_h[:-1].flatten(0, 1).T @ drive[1:].flatten(0, 1)
        dz0 = None
        if bar_z0 is not None:
            dW = dW + bar_z0.T @ drive[0]
        if bar_w is not None:
            through_w = torch.cat([drive[1:] @ bar_w.T, torch.zeros_like(z0).unsqueeze(0)])
            dZ = through_w if dZ is None else dZ + through_w
            dz0 = drive[0] @ bar_w.T
        return (psi_h if ctx.given[0] else None, H if ctx.given[1] else None, dZ, None, dW, dz0, None)


class RateSequence(torch.autograd.Function):
    r"""``(Z, V)`` of :func:`rnnnotes.functional.rate_step` over a whole sequence ``current (T, B, n)``, or of
    ``S`` networks at once (``current (S, T, B, n)``, ``w (S, n, n)``: what ``vmap`` over seeds runs). Backward:
    :math:`\delta v_t = g^v_t + \alpha \delta v_{t+1} + \phi'(v_t)(g^z_t + (1-\alpha)\delta v_{t+1} W^T)`."""

    @staticmethod
    def forward(current, w, v, z, k, plain):
        Z, V, time = torch.empty_like(current), torch.empty_like(current), w.dim() - 2
        phi_into = _activation_into(k.activation)
        for t in range(current.shape[time]):
            v = torch.lerp(_matmul_add(current.select(time, t), z, w), v, k.alpha, out=V.select(time, t))
            z = phi_into(v, Z.select(time, t))
        return Z, V

    @staticmethod
    def setup_context(ctx, inputs, output):
        current, w, v0, z0, k, plain = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(current, w, v0, z0, *output)
        ctx.k, ctx.plain = k, plain

    @staticmethod
    def backward(ctx, grad_z, grad_v):
        current, w, v0, z0, Z, V = ctx.saved_tensors
        if torch.is_grad_enabled():
            if w.dim() == 3:
                raise NotImplementedError("second derivatives of vmapped seeds: call the cells with fast=False")
            if not ctx.k.cut:  # the fused backward with its hand-written adjoint
                return RateBackward.apply(grad_z, grad_v, Z, V, w, z0, ctx.k) + (None, None)
            return differentiable_backward(ctx.plain, (current, w, v0, z0, ctx.k), (grad_z, grad_v)) + (None,)
        return _rate_backward(grad_z, grad_v, Z, V, w, z0, ctx.k) + (None, None)

    @staticmethod
    def vmap(info, in_dims, current, w, v, z, k, plain):
        """Seeds under ``vmap``: the seed dimension made the leading one and the batched loop run."""
        def seeds_first(x, dim):
            return x.expand(info.batch_size, *x.shape) if dim is None else x.movedim(dim, 0)
        batched = [seeds_first(x, dim) for x, dim in zip((current, w, v, z), in_dims)]
        return RateSequence.apply(*batched, k, plain), (0, 0)


def rate_sequence(current, w, state, params, plain, *, cut, graphs=None):
    """``(z, v)`` of the rate step run from ``state`` on ``current (T, B, n)``; ``plain`` the same map on the
    plain path, ``graphs`` a dict in which CUDA graphs are kept (:func:`rnnnotes.fused.run_sequence`)."""
    k = RateConstants(alpha=params.alpha, activation=params.activation, cut=cut)
    return run_sequence(lambda *a: apply(RateSequence, *a, k, plain), (current, w, state.v, state.z), k, graphs)
