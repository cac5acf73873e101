"""Recurrent cells as modules: a leaky rate RNN and the LIF / ALIF spiking neurons of the LSNN.

A cell holds weights and a frozen params object (:mod:`rnnnotes.params`) and calls the functional core
(:mod:`rnnnotes.functional`); it never holds state. Conventions: time-first tensors ``(T, B, N)``, weights used as
``x @ W`` so ``w_in[i, j]`` connects input ``i`` to neuron ``j``. ``cell.step(input_current, state)`` is one pure
time step returning ``(output, state)``; ``cell(x)`` runs a whole sequence and projects the input for all steps
with one matmul before the time loop. ``cell.state_map()`` gives the step as a map of a flat state vector (for
Lyapunov spectra and other analyses); ``cell.gains(hidden, state)`` the derivative of each unit's output with
respect to its own (earlier) potential in a run from ``state``, which the credit rules need. What all cells share is
:class:`rnnnotes.recurrent.RecurrentLayer`.
"""
import math
from dataclasses import replace

import torch
from torch import nn

from . import functional as F, fused, fused_rate
from .checks import require_count, require_integer
from .params import ALIFParams, LIFParams, RateParams, VanillaInit, with_overrides
from .functional import RateOutput, RateState, SpikeFunction, SpikingOutput, SpikingState, spike  # noqa: F401
from .recurrent import RecurrentLayer, StateMap, transposed_product  # noqa: F401 (StateMap: part of this API)
from .seeding import generator


class RateRNN(RecurrentLayer):
    r"""Leaky rate RNN (the ModProp / BiolHessRNN network), :func:`rnnnotes.functional.rate_step`.

    ``RateRNN(n_in, n, params)`` with a :class:`~rnnnotes.params.RateParams`, or with its fields as keywords
    (``activation``, ``tau``, ``dt``); ``gain`` scales the initial weights' variance.
    """

    step_function = staticmethod(F.rate_step)
    state_type = RateState

    def __init__(self, n_in, n, params=None, *, gain=1.0, seed=None, **overrides):
        super().__init__(n_in, n, with_overrides(RateParams, params, overrides), gain=gain, seed=seed)

    @property
    def activation(self):
        return self.params.activation

    def initial_state(self, batch, *, device=None, dtype=None):
        zeros = self._zeros(batch, self.n, device, dtype)
        return RateState(v=zeros, z=zeros.clone())

    def _fused(self, current, w_rec, state, params, plain, cut):
        return RateOutput(*fused_rate.rate_sequence(current, w_rec, state, params, plain, cut=cut, graphs=self._graphs))

    def gains(self, hidden, state=None):
        r"""``(phi'(v_k), 0)``: the exact :math:`\partial z_k / \partial v_k` of every unit and step (detached);
        lag 0. The initial ``state`` (taken for the spiking cells' signature) does not enter."""
        return F.ACTIVATION_FUNCTIONS[self.params.activation][1](hidden.v.detach()), 0

    def _layout(self):
        return [("v", self.n, True)]

    def state_map(self):
        r"""The step on ``h = v`` (:class:`StateMap`) with its closed-form tangent map
        :math:`D_t Q = \alpha Q + (1 - \alpha) W_{rec}^T (\phi'(v_{t-1}) \odot Q)`. The tangent map computes the
        step too, with :math:`\phi(v_{t-1}) W_{rec}` and :math:`(\phi'(v_{t-1}) \odot Q)^T W_{rec}` as one matrix
        product."""
        base = super().state_map()
        phi = F.ACTIVATION_FUNCTIONS[self.params.activation][0]

        def tangent(h, x, Q):
            z = phi(h)
            gain = F.activation_gain(self.params.activation, h, z)
            rows = torch.cat([z.unsqueeze(-2), (gain.unsqueeze(-1) * Q).mT], dim=-2) @ self.step_weights()
            drive, mixed = self.input_current(x) + rows[..., 0, :], rows[..., 1:, :].mT
            if self.alpha == 0:
                return drive, mixed
            return torch.lerp(drive, h, self.alpha), torch.lerp(mixed, Q, self.alpha)
        return base._replace(tangent=tangent)

    def _from_parts(self, parts):
        return RateState(v=parts["v"], z=F.ACTIVATION_FUNCTIONS[self.params.activation][0](parts["v"]))


class VanillaRNN(RateRNN):
    r"""Gradient flossing's RNN (Engelken 2023): a leak-free tanh map, read out from the pre-activation,

    .. math:: x_t = \tanh(x_{t-1}) W_{rec} + b + s_t W_{in} / n_{in}, \qquad r_t = x_t W_{out} + c

    (``w_rec`` is the transpose of the paper's :math:`J`; self-connections allowed). Weights, bias ``b`` and the
    learned initial state ``x0 (n_initial, n)`` follow ``init`` (:class:`~rnnnotes.params.VanillaInit`), drawn from
    the streams ``(seed, "vanilla-weights")`` and ``(seed, "initial-state")``; trajectory ``i`` of a batch starts
    at ``x0[i % n_initial]`` (the original learns one start per batch column). The readout reads ``x``
    (``readout_variable = "v"``), so credit rules, which assign credit through ``z``, do not apply.
    """

    readout_variable = "v"

    def __init__(self, n_in, n, init=None, *, n_initial=1, seed=None):
        super().__init__(n_in, n, RateParams.leak_free(), seed=seed)
        self.init = VanillaInit() if init is None else init
        require_count(n_initial=n_initial)
        g = generator(self.seed, "vanilla-weights")
        with torch.no_grad():
            if self.init.orthogonal:
                self.w_rec.copy_(self.init.g * torch.linalg.qr(torch.randn(n, n, generator=g))[0])
            else:
                self.w_rec.copy_(self.init.g * torch.randn(n, n, generator=g) / math.sqrt(n) + self.init.gbar / n)
            self.w_in.copy_(self.init.input_std * torch.randn(n_in, n, generator=g) + self.init.input_mean)
        self.b = nn.Parameter(self.init.bias_offset + self.init.bias_scale * torch.rand(n, generator=g))
        x0 = torch.randn(n_initial, n, generator=generator(self.seed, "initial-state"))
        with torch.no_grad():
            for _ in range(self.init.settle_steps):
                x0 = torch.tanh(x0) @ self.w_rec + self.b
        self.x0 = nn.Parameter(x0)

    def recurrent_weights(self):
        return self.w_rec

    def input_current(self, x):
        """``x @ W_in / n_in + b`` for all steps at once."""
        return x @ self.w_in / self.n_in + self.b

    def initial_state(self, batch, *, device=None, dtype=None):
        require_count(batch=batch)
        index = torch.arange(batch, device=self.x0.device) % self.x0.shape[0]
        v = self.x0[index].to(device=device or self.x0.device, dtype=dtype or self.x0.dtype)
        return RateState(v=v, z=torch.tanh(v))

    def state_map(self, coordinates="potential"):
        r"""The step (with its closed-form tangent map) as a map of ``h = x`` (``"potential"``, Jacobian
        :math:`\mathrm{diag}(\phi'(x_{t-1}))\,W_{rec}` acting on row vectors) or of ``h = tanh(x)`` (``"rate"``,
        :math:`r_t = \tanh(r_{t-1} W_{rec} + I_t)`, Jacobian :math:`W_{rec}\,\mathrm{diag}(\phi'(x_t))`: what the
        original code uses for the exponents). The two are conjugate by a diagonal, so their exponents agree up to
        :math:`O(1/T)` boundary terms."""
        if coordinates == "potential":
            return super().state_map()
        if coordinates != "rate":
            raise ValueError(f"coordinates must be 'potential' or 'rate', got {coordinates!r}")

        def step(r, s):
            return torch.tanh(r @ self.w_rec + self.input_current(s))

        def tangent(r, s, Q):
            nxt = step(r, s)
            return nxt, (1.0 - nxt ** 2).unsqueeze(-1) * transposed_product(self.w_rec, Q)
        return StateMap(step=step, pack=lambda state: state.z, unpack=lambda r: RateState(v=torch.atanh(r), z=r),
                        differentiable=torch.ones(self.n, dtype=torch.bool), tangent=tangent)


class _SpikingLayer(RecurrentLayer):
    r"""LIF/ALIF layer in the step order of LSNN-official (Bellec et al. 2018); see
    :func:`rnnnotes.functional.alif_step`. Every synapse has a random integer delay :math:`d < n_{delay}`:
    :math:`I_t = \sum_d x_{t-d} W_{in}^{(d)} + z_{t-1-d} W_{rec}^{(d)}`. The delays come from the stream
    ``(seed, "delays")``.
    """

    state_type = SpikingState

    def __init__(self, n_in, n, params, *, seed=None):
        super().__init__(n_in, n, params, seed=seed)
        self.n_delay = params.n_delay
        g = generator(self.seed, "delays")
        self.register_buffer("delay_in", torch.randint(self.n_delay, (n_in, n), generator=g))
        self.register_buffer("delay_rec", torch.randint(self.n_delay, (n, n), generator=g))

    def initial_state(self, batch, *, device=None, dtype=None):
        zeros = self._zeros(batch, self.n, device, dtype)
        history = self._zeros(batch, (self.n_delay - 1) * self.n, device, dtype)
        return SpikingState(v=zeros, z=zeros.clone(), b=zeros.clone(), ref=zeros.clone(), history=history)

    def _by_delay(self, w, delay):
        """``(n_delay, n_pre, n)``: slice ``d`` holds the synapses of ``w`` whose delay is ``d``."""
        if self.n_delay == 1:
            return w.unsqueeze(0)
        return w * (delay == torch.arange(self.n_delay, device=w.device).view(-1, 1, 1))

    def step_weights(self):
        """``(n_delay * n, n)``: the weights that act on the spike history ``z_{t-1}, ..., z_{t-n_delay}``."""
        return self._by_delay(self.recurrent_weights(), self.delay_rec).flatten(0, 1)

    def input_current(self, x):
        """Feed-forward current ``sum_d x_{t-d} W_in^(d)`` for all steps at once, ``(T, B, n)``: one matmul per
        delay, each accumulated in place into the steps it reaches (no delay-shifted copy of ``x``)."""
        if self.n_delay == 1:
            return x @ self.w_in
        w = self._by_delay(self.w_in, self.delay_in)
        current = x @ w[0]
        for d in range(1, min(self.n_delay, x.shape[0])):
            current[d:].flatten(0, 1).addmm_(x[:-d].flatten(0, 1), w[d])
        return current

    def _final_state(self, out, state, params):
        r"""The state the plain loop would carry out of a fused run, from its outputs and the initial ``state``:
        :math:`b_T` by the loop's own recursion :math:`b_t = \rho b_{t-1} + (1 - \rho) z_{t-1}` (so carried
        states match bit for bit), the refractory steps left after each neuron's last spike (or after the initial
        count), and the last ``n_delay - 1`` spikes before :math:`z_T` as the history."""
        steps, batch, n = out.z.shape
        b = state.b
        if isinstance(params, ALIFParams):
            for z in torch.cat([state.z.unsqueeze(0), out.z[:-1]]):
                b = torch.lerp(z, b, params.rho)
        ref = state.ref
        if params.n_ref:
            spiked = out.z != 0
            last = steps - 1 - spiked.flip(0).to(torch.uint8).argmax(0)
            ref = torch.where(spiked.any(0), last + params.n_ref + 1 - steps, state.ref - steps).clamp(min=0).to(ref)
        history = state.history
        if self.n_delay > 1:  # z_{T-2}, ..., z_{T-D}, reaching back into the initial spikes for short sequences
            earlier = state.presynaptic.view(batch, self.n_delay, n).flip(1).transpose(0, 1)  # z_{-D}, ..., z_{-1}
            recent = torch.cat([earlier, out.z[-self.n_delay:]])[-self.n_delay:]  # z_{T-D}, ..., z_{T-1}
            history = recent[:-1].flip(0).transpose(0, 1).reshape(batch, -1)
        return SpikingState(v=out.v[-1], z=out.z[-1], b=b, ref=ref, history=history)

    def _fused(self, current, w_rec, state, params, plain, cut):
        adaptive = isinstance(self.params, ALIFParams)
        return SpikingOutput(*fused.spiking_sequence(current, w_rec, state, params, plain, adaptive=adaptive,
                                                     cut=cut, graphs=self._graphs))

    def gains(self, hidden, state=None):
        r"""``(g, 1)``: :math:`g_k = \partial z_k / \partial v_{k-1} = \psi((v_{k-1} - A_k) / A_k) / (A_k\, dt)`
        of every neuron and step (detached) of a run from ``state`` (None: :meth:`initial_state`), whose ``v`` is
        :math:`v_{-1}`; zero on refractory steps: the ``n_ref`` steps after a spike and the first ``state.ref``
        steps (the carried counter). The spike lags the voltage by one step."""
        p, v = self.params, hidden.v.detach()
        state = self.initial_state(v.shape[1], device=v.device, dtype=v.dtype) if state is None else state
        v_prev = torch.cat([state.v.detach().unsqueeze(0), v[:-1]])
        threshold = hidden.threshold.detach()
        gain = F.pseudo_derivative((v_prev - threshold) / threshold, p.gamma) / threshold / p.dt
        if not p.n_ref:
            return gain, 1
        refractory = torch.arange(v.shape[0], device=v.device).view(-1, 1, 1) < state.ref  # ref_{k-1} = ref - k > 0
        spiked = hidden.z.detach() > 0
        for lag in range(1, p.n_ref + 1):
            refractory[lag:] |= spiked[:-lag]
        return gain.masked_fill(refractory, 0.0), 1

    def _layout(self):
        adaptive = isinstance(self.params, ALIFParams)
        return [("v", self.n, True), ("z", self.n, True), ("b", self.n, adaptive), ("ref", self.n, False)]

    def _from_parts(self, parts):
        history = parts["v"][..., :0]
        return SpikingState(v=parts["v"], z=parts["z"], b=parts["b"], ref=parts["ref"], history=history)


class ALIF(_SpikingLayer):
    """LSNN layer: ``n_regular`` LIF neurons (beta = 0) followed by ``n_adaptive`` ALIF neurons.

    ``ALIF(n_in, n_regular, n_adaptive, params)`` with an :class:`~rnnnotes.params.ALIFParams` (e.g.
    ``ALIFParams.bellec2018_store_recall()``), or with its fields as keywords (``tau_m``, ``tau_a``, ``beta``,
    ``thr``, ``n_ref``, ``dt``, ``gamma``, ``n_delay``). ``params.beta`` applies to the adaptive neurons; the
    buffer ``beta (n,)`` holds the per-neuron values.
    """

    step_function = staticmethod(F.alif_step)

    def __init__(self, n_in, n_regular, n_adaptive, params=None, *, seed=None, **overrides):
        require_integer(n_regular=n_regular, n_adaptive=n_adaptive)
        if n_regular < 0 or n_adaptive < 0 or n_regular + n_adaptive <= 0:
            raise ValueError(f"n_regular and n_adaptive must be >= 0 with a positive sum, "
                             f"got n_regular={n_regular}, n_adaptive={n_adaptive}")
        params = with_overrides(ALIFParams, params, overrides)
        if torch.is_tensor(params.beta):
            raise ValueError("ALIF takes a number beta for its adaptive neurons; per-neuron values go in the buffer")
        super().__init__(n_in, n_regular + n_adaptive, params, seed=seed)
        self.n_regular, self.n_adaptive = int(n_regular), int(n_adaptive)
        beta = [0.0] * self.n_regular + [float(params.beta)] * self.n_adaptive  # float64: exact in a float64 cell
        self.register_buffer("beta", torch.tensor(beta, dtype=torch.float64))  # the step casts it to w_in's dtype

    def step_params(self):
        return replace(self.params, beta=self.beta.to(self.w_in.dtype))


class LIF(_SpikingLayer):
    """Leaky integrate-and-fire layer, :func:`rnnnotes.functional.lif_step`: ``LIF(n_in, n, params)`` with a
    :class:`~rnnnotes.params.LIFParams`, or its fields as keywords (``tau_m``, ``thr``, ``n_ref``, ``dt``,
    ``gamma``, ``n_delay``)."""

    step_function = staticmethod(F.lif_step)

    def __init__(self, n_in, n, params=None, *, seed=None, **overrides):
        super().__init__(n_in, n, with_overrides(LIFParams, params, overrides), seed=seed)
