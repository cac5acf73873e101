"""Recurrent cells: a leaky rate RNN and the LIF / ALIF spiking neurons of the LSNN.

Conventions: time-first tensors ``(T, B, N)``, weights used as ``x @ W`` so ``w_in[i, j]`` connects input ``i`` to
neuron ``j``. ``cell.step(input_current, state)`` is one pure time step; ``cell(x)`` runs a whole sequence and
projects the input for all steps with one matmul before the time loop. Cells hold weights, never state.
"""
import math
from typing import NamedTuple

import torch
from torch import nn

from .checks import require_positive, require_shape


class SpikeFunction(torch.autograd.Function):
    r"""Heaviside spike with the LSNN pseudo-derivative (Bellec et al. 2018).

    Forward :math:`z = H(\tilde v)`, backward
    :math:`\partial z / \partial \tilde v = \gamma \max(0, 1 - |\tilde v|)` with the scaled voltage
    :math:`\tilde v = (v - A) / A`.
    """

    @staticmethod
    def forward(ctx, v_scaled, gamma):
        ctx.save_for_backward(v_scaled)
        ctx.gamma = gamma
        return (v_scaled > 0).to(v_scaled.dtype)

    @staticmethod
    def backward(ctx, grad_z):
        (v_scaled,) = ctx.saved_tensors
        return grad_z * ctx.gamma * torch.clamp(1.0 - v_scaled.abs(), min=0.0), None


def spike(v_scaled, gamma):
    """Heaviside of the scaled voltage with the pseudo-derivative ``gamma * max(0, 1 - |v_scaled|)``."""
    return SpikeFunction.apply(v_scaled, gamma)


class SpikingState(NamedTuple):
    """State of a LIF/ALIF layer: voltage, last spikes, adaptation, refractory steps left, spike history."""

    v: torch.Tensor  # (B, n) membrane potential
    z: torch.Tensor  # (B, n) spikes of the previous step, in units of 1/dt
    b: torch.Tensor  # (B, n) threshold adaptation variable
    ref: torch.Tensor  # (B, n) refractory steps left (no gradient)
    history: torch.Tensor  # (B, (n_delay - 1) * n) older spikes z_{t-2}, ..., z_{t-n_delay} (delayed synapses)

    @property
    def presynaptic(self):
        """The spikes that delayed synapses read: ``z_{t-1}, ..., z_{t-n_delay}``, ``(B, n_delay * n)``."""
        return torch.cat([self.z, self.history], dim=1) if self.history.shape[1] else self.z


class SpikingOutput(NamedTuple):
    z: torch.Tensor  # (T, B, n) spikes
    v: torch.Tensor  # (T, B, n) membrane potential after the step
    threshold: torch.Tensor  # (T, B, n) adaptive threshold A_t


class RateState(NamedTuple):
    v: torch.Tensor  # (B, n) pre-activation
    z: torch.Tensor  # (B, n) rate, phi(v)

    @property
    def presynaptic(self):
        return self.z


class RateOutput(NamedTuple):
    z: torch.Tensor  # (T, B, n) rates
    v: torch.Tensor  # (T, B, n) pre-activations


def recurrent_input(state, w_rec):
    """The recurrent current ``z_{t-1} @ W_rec`` (with delays: the spike history times the delay-stacked
    weights): the exact default that credit rules may replace in training."""
    return state.presynaptic @ w_rec


def _no_self_connections(w_rec):
    """``w_rec`` with its diagonal forced to zero, so autapses never act and never receive gradient."""
    return w_rec * (1.0 - torch.eye(w_rec.shape[0], dtype=w_rec.dtype, device=w_rec.device))


class _Recurrent(nn.Module):
    """Shared weights of a recurrent layer: ``w_in ~ N(0, gain/n_in)``, ``w_rec ~ N(0, gain/n)``, zero diagonal."""

    def __init__(self, n_in, n, *, gain=1.0, seed=None):
        super().__init__()
        require_positive(n_in=n_in, n=n, gain=gain)
        self.n_in, self.n = int(n_in), int(n)
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        self.w_in = nn.Parameter(torch.randn(n_in, n, generator=g) * math.sqrt(gain / n_in))
        self.w_rec = nn.Parameter(_no_self_connections(torch.randn(n, n, generator=g) * math.sqrt(gain / n)))

    def recurrent_weights(self):
        return _no_self_connections(self.w_rec)

    def _check_input(self, x):
        require_shape("x", x, (None, None, self.n_in))


class RateRNN(_Recurrent):
    r"""Leaky rate RNN (the ModProp / BiolHessRNN network).

    .. math:: v_t = \alpha v_{t-1} + (1 - \alpha)(x_t W_{in} + z_{t-1} W_{rec}), \quad z_t = \phi(v_t),
              \quad \alpha = e^{-dt/\tau}

    ``activation`` is ``"tanh"`` or ``"relu"``; ``tau`` and ``dt`` in ms. A very small ``tau`` gives the
    memoryless RNN ``z_t = phi(x_t W_in + z_{t-1} W_rec)``.
    """

    activations = {"tanh": torch.tanh, "relu": torch.relu}

    def __init__(self, n_in, n, *, activation="tanh", tau=20.0, dt=1.0, gain=1.0, seed=None):
        super().__init__(n_in, n, gain=gain, seed=seed)
        require_positive(tau=tau, dt=dt)
        if activation not in self.activations:
            raise ValueError(f"activation must be one of {sorted(self.activations)}, got {activation!r}")
        self.activation, self.tau, self.dt = activation, float(tau), float(dt)
        self.alpha = math.exp(-dt / tau)

    def initial_state(self, batch, *, device=None, dtype=None):
        device = device or self.w_in.device
        dtype = dtype or self.w_in.dtype
        zeros = torch.zeros(batch, self.n, device=device, dtype=dtype)
        return RateState(v=zeros, z=zeros.clone())

    def step(self, input_current, state, w_rec=None, recurrent=None):
        """One step; ``input_current = x_t @ w_in`` of shape ``(B, n)``."""
        w_rec = self.recurrent_weights() if w_rec is None else w_rec
        rec = (recurrent or recurrent_input)(state, w_rec)
        v = self.alpha * state.v + (1.0 - self.alpha) * (input_current + rec)
        z = self.activations[self.activation](v)
        return z, RateState(v=v, z=z)

    def forward(self, x, state=None, *, recurrent=None):
        """Run ``x (T, B, n_in)``; ``recurrent(state, w_rec)`` replaces ``recurrent_input`` (credit rules)."""
        self._check_input(x)
        state = self.initial_state(x.shape[1], device=x.device, dtype=x.dtype) if state is None else state
        current, w_rec = x @ self.w_in, self.recurrent_weights()
        zs, vs = [], []
        for i_t in current:
            z, state = self.step(i_t, state, w_rec, recurrent)
            zs.append(z)
            vs.append(state.v)
        return RateOutput(z=torch.stack(zs), v=torch.stack(vs))


class _SpikingLayer(_Recurrent):
    r"""LIF/ALIF layer in the step order of LSNN-official (Bellec et al. 2018), per step:

    .. math::
        b_t &= \rho b_{t-1} + (1 - \rho) z_{t-1}, \qquad A_t = v_{th} + \beta b_t \\
        v_t &= \alpha v_{t-1} + (1 - \alpha) I_t - z_{t-1} A_t\, dt \\
        z_t &= H\big((v_{t-1} - A_t) / A_t\big) / dt \quad (0 \text{ while refractory})

    with :math:`\alpha = e^{-dt/\tau_m}`, :math:`\rho = e^{-dt/\tau_a}` and
    :math:`I_t = \sum_d x_{t-d} W_{in}^{(d)} + z_{t-1-d} W_{rec}^{(d)}`, where every synapse has a random
    integer delay :math:`d < n_{delay}`. The spike is decided from the previous voltage against the current
    threshold; the reset lands one step after the spike; refractory steps pass no gradient.
    """

    def __init__(self, n_in, n, *, beta, tau_m, tau_a, thr, n_ref, dt, gamma, n_delay=1, seed=None):
        super().__init__(n_in, n, seed=seed)
        require_positive(tau_m=tau_m, tau_a=tau_a, thr=thr, dt=dt, gamma=gamma, n_delay=n_delay)
        if n_ref < 0 or int(n_ref) != n_ref:
            raise ValueError(f"n_ref must be a non-negative integer, got {n_ref!r}")
        if int(n_delay) != n_delay:
            raise ValueError(f"n_delay must be a positive integer, got {n_delay!r}")
        self.tau_m, self.tau_a, self.thr, self.dt, self.gamma = map(float, (tau_m, tau_a, thr, dt, gamma))
        self.n_ref, self.n_delay = int(n_ref), int(n_delay)
        self.alpha, self.rho = math.exp(-dt / tau_m), math.exp(-dt / tau_a)
        self.register_buffer("beta", beta.clone().float())
        g = torch.Generator().manual_seed(seed + 1) if seed is not None else None
        self.register_buffer("delay_in", torch.randint(self.n_delay, (n_in, n), generator=g))
        self.register_buffer("delay_rec", torch.randint(self.n_delay, (n, n), generator=g))

    def initial_state(self, batch, *, device=None, dtype=None):
        device = device or self.w_in.device
        dtype = dtype or self.w_in.dtype
        zeros = torch.zeros(batch, self.n, device=device, dtype=dtype)
        history = torch.zeros(batch, (self.n_delay - 1) * self.n, device=device, dtype=dtype)
        return SpikingState(v=zeros, z=zeros.clone(), b=zeros.clone(), ref=zeros.clone(), history=history)

    def _by_delay(self, w, delay):
        """``(n_delay, n_pre, n)``: slice ``d`` holds the synapses of ``w`` whose delay is ``d``."""
        if self.n_delay == 1:
            return w.unsqueeze(0)
        return w * (delay == torch.arange(self.n_delay, device=w.device).view(-1, 1, 1))

    def stacked_recurrent_weights(self):
        """``(n_delay * n, n)``: the weights that act on the spike history ``z_{t-1}, ..., z_{t-n_delay}``."""
        return self._by_delay(self.recurrent_weights(), self.delay_rec).flatten(0, 1)

    def input_current(self, x):
        """Feed-forward current ``sum_d x_{t-d} W_in^(d)`` for all steps at once, ``(T, B, n)``: one matmul of
        the delay-shifted inputs ``[x_t, x_{t-1}, ..., x_{t-n_delay+1}]`` with the delay-stacked weights."""
        if self.n_delay == 1:
            return x @ self.w_in
        shifted = torch.cat([nn.functional.pad(x, (0, 0, 0, 0, d, 0))[:x.shape[0]] for d in range(self.n_delay)], -1)
        return shifted @ self._by_delay(self.w_in, self.delay_in).flatten(0, 1)

    def step(self, input_current, state, w_rec=None, recurrent=None):
        """One step; ``input_current`` is the feed-forward current at this step, ``(B, n)``."""
        if w_rec is None:
            w_rec = self.stacked_recurrent_weights()
        b = torch.lerp(state.z, state.b, self.rho)  # rho * b + (1 - rho) * z
        threshold = self.thr + self.beta.to(b.dtype) * b
        rec = (recurrent or recurrent_input)(state, w_rec)
        v = torch.lerp(input_current + rec, state.v, self.alpha) - state.z * threshold * self.dt
        z = spike((state.v - threshold) / threshold, self.gamma)
        ref = state.ref
        if self.n_ref:  # refractory neurons are silenced by a mask, which also blocks their gradient
            z = z * (ref <= 0)
            ref = (ref - 1).clamp(min=0) + z.detach() * self.n_ref
        z = z / self.dt if self.dt != 1.0 else z
        history = state.presynaptic[:, :-self.n]
        return (z, v, threshold), SpikingState(v=v, z=z, b=b, ref=ref, history=history)

    def forward(self, x, state=None, *, recurrent=None):
        """Run ``x (T, B, n_in)``; ``recurrent(state, w_rec)`` replaces ``recurrent_input`` (credit rules)."""
        self._check_input(x)
        state = self.initial_state(x.shape[1], device=x.device, dtype=x.dtype) if state is None else state
        current = self.input_current(x)
        w_rec = self.stacked_recurrent_weights()
        outputs = []
        for i_t in current:
            out, state = self.step(i_t, state, w_rec, recurrent)
            outputs.append(out)
        z, v, threshold = (torch.stack(o) for o in zip(*outputs))
        return SpikingOutput(z=z, v=v, threshold=threshold)


class ALIF(_SpikingLayer):
    """LSNN layer: ``n_regular`` LIF neurons (beta = 0) followed by ``n_adaptive`` ALIF neurons.

    Times in ms; ``thr`` in the units of the input current; ``gamma`` scales the pseudo-derivative.
    """

    def __init__(self, n_in, n_regular, n_adaptive, *, tau_m=20.0, tau_a=200.0, beta=1.6, thr=0.01, n_ref=2,
                 dt=1.0, gamma=0.3, n_delay=1, seed=None):
        if n_regular < 0 or n_adaptive < 0 or n_regular + n_adaptive <= 0:
            raise ValueError(f"n_regular and n_adaptive must be >= 0 with a positive sum, "
                             f"got n_regular={n_regular}, n_adaptive={n_adaptive}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        betas = torch.cat([torch.zeros(n_regular), torch.full((n_adaptive,), float(beta))])
        super().__init__(n_in, n_regular + n_adaptive, beta=betas, tau_m=tau_m, tau_a=tau_a, thr=thr,
                         n_ref=n_ref, dt=dt, gamma=gamma, n_delay=n_delay, seed=seed)
        self.n_regular, self.n_adaptive = int(n_regular), int(n_adaptive)


class LIF(_SpikingLayer):
    """Leaky integrate-and-fire layer: the ALIF dynamics with a fixed threshold (beta = 0)."""

    def __init__(self, n_in, n, *, tau_m=20.0, thr=0.03, n_ref=0, dt=1.0, gamma=0.3, n_delay=1, seed=None):
        require_positive(n=n)
        super().__init__(n_in, n, beta=torch.zeros(n), tau_m=tau_m, tau_a=1.0, thr=thr, n_ref=n_ref, dt=dt,
                         gamma=gamma, n_delay=n_delay, seed=seed)
