r"""The functional core: one pure time step per cell, ``step(input_current, state, params, w_rec) -> (out, state)``.

``input_current`` is the feed-forward current of this step ``(B, n)``; ``w_rec`` the recurrent weights as they act
(``x @ W`` convention, zero diagonal; with synaptic delays the delay-stacked ``(n_delay * n, n)`` matrix);
``recurrent(state, w_rec)`` computes the recurrent current and is the hook through which training-time credit
rules change how gradients flow (default :func:`recurrent_input`, the exact current). Every custom
``autograd.Function`` here works under ``torch.func`` (``grad``, ``jvp``, ``vjp``, ``vmap``).
"""
from typing import NamedTuple

import torch
from torch._functorch.utils import unwrap_dead_wrappers

from .checks import require_shape


class SpikeFunction(torch.autograd.Function):
    r"""Heaviside spike with the LSNN pseudo-derivative (Bellec et al. 2018).

    Forward :math:`z = H(\tilde v)`; the derivative, in reverse and forward mode alike, is the surrogate
    :math:`\partial z / \partial \tilde v = \gamma \max(0, 1 - |\tilde v|)` of the scaled voltage
    :math:`\tilde v = (v - A) / A`. Second derivatives differentiate the surrogate.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(v_scaled, gamma):
        return (v_scaled > 0).to(v_scaled.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        v_scaled, gamma = inputs
        ctx.save_for_backward(v_scaled)
        ctx.save_for_forward(v_scaled)
        ctx.gamma = gamma

    @staticmethod
    def backward(ctx, grad_z):
        (v_scaled,) = ctx.saved_tensors
        return grad_z * pseudo_derivative(v_scaled, ctx.gamma), None

    @staticmethod
    def jvp(ctx, v_dot, _gamma_dot):
        (v_scaled,) = ctx.saved_tensors
        return v_dot * pseudo_derivative(v_scaled, ctx.gamma)


def pseudo_derivative(v_scaled, gamma):
    r""":math:`\gamma \max(0, 1 - |\tilde v|)`, the surrogate of :math:`\partial H(\tilde v) / \partial \tilde v`."""
    return gamma * torch.clamp(1.0 - v_scaled.abs(), min=0.0)


def apply(function, *args):
    """``function.apply(*args)`` for an ``autograd.Function`` with ``setup_context``, all arguments positional.

    Outside ``torch.func`` transforms this skips the signature binding that ``Function.apply`` does on every
    call for such functions (it doubles the cost of a spike on small tensors); inside transforms it takes the
    full path.
    """
    if torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    return super(torch.autograd.Function, function).apply(*unwrap_dead_wrappers(args))


def spike(v_scaled, gamma):
    """Heaviside of the scaled voltage with the pseudo-derivative ``gamma * max(0, 1 - |v_scaled|)``."""
    return apply(SpikeFunction, v_scaled, gamma)


# ------------------------------------------------------------------------------------------------ states, outputs

class RateState(NamedTuple):
    """State of a rate layer; ``z = phi(v)`` is carried so the next step reads it without recomputing."""

    v: torch.Tensor  # (B, n) pre-activation
    z: torch.Tensor  # (B, n) rate, phi(v)

    @property
    def presynaptic(self):
        return self.z


class RateOutput(NamedTuple):
    """What a rate layer emits, per step ``(B, n)`` or per sequence ``(T, B, n)``."""

    z: torch.Tensor  # rates
    v: torch.Tensor  # pre-activations


class SpikingState(NamedTuple):
    """State of a LIF/ALIF layer. ``v``, ``z``, ``b`` and ``history`` carry gradients (``z`` through the
    pseudo-derivative); the refractory counter ``ref`` is an integer count carried without gradient."""

    v: torch.Tensor  # (B, n) membrane potential
    z: torch.Tensor  # (B, n) spikes of the previous step, in units of 1/dt
    b: torch.Tensor  # (B, n) threshold adaptation variable (constant 0 for LIF)
    ref: torch.Tensor  # (B, n) refractory steps left (no gradient)
    history: torch.Tensor  # (B, (n_delay - 1) * n) older spikes z_{t-2}, ..., z_{t-n_delay} (delayed synapses)

    @property
    def presynaptic(self):
        """The spikes that delayed synapses read: ``z_{t-1}, ..., z_{t-n_delay}``, ``(B, n_delay * n)``."""
        return torch.cat([self.z, self.history], dim=1) if self.history.shape[1] else self.z


class SpikingOutput(NamedTuple):
    """What a spiking layer emits, per step ``(B, n)`` or per sequence ``(T, B, n)``."""

    z: torch.Tensor  # spikes
    v: torch.Tensor  # membrane potential after the step
    threshold: torch.Tensor  # adaptive threshold A_t


def check_state(state, kind, batch, n, dtype, n_delay=1):
    """Raise ``ValueError`` naming the field of ``state`` that is not a ``kind`` of ``(batch, n)`` tensors of
    ``dtype`` (the spike history: ``(batch, (n_delay - 1) n)``)."""
    if not isinstance(state, kind):
        raise ValueError(f"state must be a {kind.__name__}, got {type(state).__name__}")
    for name, value in state._asdict().items():
        require_shape(f"state.{name}", value, (batch, (n_delay - 1) * n if name == "history" else n))
        if value.dtype != dtype:
            raise ValueError(f"state.{name} must have dtype {dtype}, got {value.dtype}")


def recurrent_input(state, w_rec):
    """The recurrent current ``z_{t-1} @ W_rec`` (with delays: the spike history times the delay-stacked
    weights): the exact default that credit rules may replace in training."""
    return state.presynaptic @ w_rec


def cut_presynaptic(state, w_rec):
    """e-prop: the recurrent current with no gradient into the presynaptic spikes (all delays)."""
    return state.presynaptic.detach() @ w_rec


# ------------------------------------------------------------------------------------------------------- rate step

ACTIVATION_FUNCTIONS = {
    "tanh": (torch.tanh, lambda v: 1.0 - torch.tanh(v) ** 2),
    "relu": (torch.relu, lambda v: (v > 0).to(v.dtype)),
    "linear": (lambda v: v, torch.ones_like),
}


def activation_gain(activation, v, z):
    """:math:`\\phi'(v)` from ``v`` and ``z = \\phi(v)`` (for tanh read off ``z``: :math:`1 - z^2`)."""
    if activation == "tanh":
        return 1.0 - z * z
    return ACTIVATION_FUNCTIONS[activation][1](v)


def rate_step(input_current, state, params, w_rec, *, recurrent=recurrent_input):
    r"""Leaky rate unit (``params``: :class:`~rnnnotes.params.RateParams`).

    .. math:: v_t = \alpha v_{t-1} + (1 - \alpha)(I_t + z_{t-1} W_{rec}), \quad z_t = \phi(v_t)
    """
    v = torch.lerp(input_current + recurrent(state, w_rec), state.v, params.alpha)  # lerp: cheap under forward AD
    z = ACTIVATION_FUNCTIONS[params.activation][0](v)
    return RateOutput(z=z, v=v), RateState(v=v, z=z)


# --------------------------------------------------------------------------------------------------- spiking steps

def _integrate_and_fire(input_current, state, params, w_rec, threshold, recurrent):
    r"""The membrane, spike and refractory part shared by LIF and ALIF, given this step's threshold :math:`A_t`:

    .. math:: v_t = \alpha v_{t-1} + (1 - \alpha)(I_t + z_{t-1} W_{rec}) - z_{t-1} A_t\, dt, \qquad
              z_t = H\big((v_{t-1} - A_t) / A_t\big) / dt \ (0 \text{ while refractory})
    """
    rec = recurrent(state, w_rec)
    v = torch.lerp(input_current + rec, state.v, params.alpha) - state.z * threshold * params.dt
    z = spike((state.v - threshold) / threshold, params.gamma)
    ref = state.ref
    if params.n_ref:  # refractory neurons are silenced by a mask, which also blocks their gradient
        z = z * (ref <= 0)
        ref = (ref - 1).clamp(min=0) + z.detach() * params.n_ref
    z = z / params.dt if params.dt != 1.0 else z
    history = state.presynaptic[:, :-z.shape[1]]
    return z, v, ref, history


def alif_step(input_current, state, params, w_rec, *, recurrent=recurrent_input):
    r"""ALIF neuron in the step order of LSNN-official (``params``: :class:`~rnnnotes.params.ALIFParams`):

    .. math:: b_t = \rho b_{t-1} + (1 - \rho) z_{t-1}, \qquad A_t = v_{th} + \beta b_t

    then :func:`_integrate_and_fire` with :math:`A_t`: the spike is decided from the previous voltage against the
    current threshold, and the reset lands one step after the spike.
    """
    b = torch.lerp(state.z, state.b, params.rho)  # rho * b + (1 - rho) * z
    threshold = params.thr + params.beta * b
    z, v, ref, history = _integrate_and_fire(input_current, state, params, w_rec, threshold, recurrent)
    return SpikingOutput(z=z, v=v, threshold=threshold), SpikingState(v=v, z=z, b=b, ref=ref, history=history)


def lif_step(input_current, state, params, w_rec, *, recurrent=recurrent_input):
    r"""LIF neuron (``params``: :class:`~rnnnotes.params.LIFParams`): :func:`alif_step` with the fixed threshold
    :math:`A_t = v_{th}`; ``state.b`` is carried unchanged."""
    threshold = torch.full_like(state.v, params.thr)
    z, v, ref, history = _integrate_and_fire(input_current, state, params, w_rec, threshold, recurrent)
    return SpikingOutput(z=z, v=v, threshold=threshold), SpikingState(v=v, z=z, b=state.b, ref=ref, history=history)
