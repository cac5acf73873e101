r"""Second derivatives through the fused rate loop: its backward pass as an ``autograd.Function`` whose own
backward is written by hand, so a Hessian-vector product by double backward runs on fused loops too.

The fused backward (:func:`rnnnotes.fused._rate_backward`) maps the output gradients :math:`g^z, g^v` to
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
import torch


class RateBackward(torch.autograd.Function):
    """``(drive, grad_w, dv0, dz0)`` of the fused rate loop's backward for output gradients ``grad_z``,
    ``grad_v`` (either may be ``None``), the saved outputs ``Z, V``, the weights ``w (n, n)`` and ``z0``."""

    @staticmethod
    def forward(grad_z, grad_v, Z, V, w, z0, k):
        from .fused import _rate_backward
        return _rate_backward(grad_z, grad_v, Z, V, w, z0, k)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_z, grad_v, Z, V, w, z0, k = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad_z, Z, V, w, z0, output[0])
        ctx.k, ctx.given = k, (grad_z is not None, grad_v is not None)

    @staticmethod
    def backward(ctx, bar_drive, bar_w, bar_v0, bar_z0):
        from .fused import _activation_gain
        grad_z, Z, V, w, z0, drive = ctx.saved_tensors
        alpha, c = ctx.k.alpha, 1.0 - ctx.k.alpha
        steps = Z.shape[0]
        earlier = torch.cat([z0.unsqueeze(0), Z[:-1]])  # z_{t-1}
        source = torch.zeros_like(Z) if bar_drive is None else bar_drive * c
        if bar_w is not None:
            source = source + c * (earlier @ bar_w)
        if bar_v0 is not None:
            source[0] += alpha * bar_v0
        if bar_z0 is not None:
            source[0] += c * (bar_z0 @ w)
        psi, H = _activation_gain(ctx.k.activation, V, Z), [source[0]]
        w_c = w * c
        for t in range(1, steps):  # no writes into a buffer: this backward stays differentiable by autograd
            H.append(torch.addmm(torch.add(source[t], H[-1], alpha=alpha), psi[t - 1] * H[-1], w_c))
        H = torch.stack(H)
        psi_h = psi * H
        later = torch.cat([drive[1:] @ w.T, torch.zeros_like(z0).unsqueeze(0)])  # D_{t+1} W^T, zero at the end
        g_z = later if grad_z is None else grad_z + later
        d_psi = H * g_z
        dZ = d_psi.mul_(Z).mul_(-2.0) if ctx.k.activation == "tanh" else None  # psi = 1 - z^2, read off z
        dW = psi_h[:-1].flatten(0, 1).T @ drive[1:].flatten(0, 1)
        dz0 = None
        if bar_z0 is not None:
            dW = dW + bar_z0.T @ drive[0]
        if bar_w is not None:
            through_w = torch.cat([drive[1:] @ bar_w.T, torch.zeros_like(z0).unsqueeze(0)])
            dZ = through_w if dZ is None else dZ + through_w
            dz0 = drive[0] @ bar_w.T
        return (psi_h if ctx.given[0] else None, H if ctx.given[1] else None, dZ, None, dW, dz0, None)


def rate_backward(grad_z, grad_v, Z, V, w, z0, k):
    """:class:`RateBackward` applied: the fused backward, differentiable once more by its hand-written adjoint."""
    return RateBackward.apply(grad_z, grad_v, Z, V, w, z0, k)
