"""The recurrent layer every cell builds on (:class:`RecurrentLayer`: weights, the sequence call on the plain,
fused or checkpointed path, the final state, the flat-state map for analyses) and :class:`StateMap`, a step as a
map of a flat state vector. The cells themselves are in :mod:`rnnnotes.cells`.
"""
import math
from typing import Callable, NamedTuple

import torch
import torch.utils.checkpoint
from torch import nn

from . import functional as F, fused
from .checks import require_count, require_positive, require_shape
from .functional import RateState
from .seeding import generator, resolve_seed


class StateMap(NamedTuple):
    r"""A cell's step as a map of a flat state, :math:`h_t = F(h_{t-1}, x_t)` with ``h (B, d)``, ``x (B, n_in)``.

    ``pack(state) -> h`` and ``unpack(h) -> state`` convert between the cell's NamedTuple state and ``h``.
    ``differentiable (d,)`` marks the coordinates through which :math:`F` has a derivative; the others (a
    refractory counter, a LIF neuron's unused adaptation) are carried without gradient, so their rows and columns
    of the Jacobian :math:`\partial h_t / \partial h_{t-1}` are zero. For spiking cells the Jacobian is the
    *surrogate* Jacobian: :math:`\partial z_t / \partial v_{t-1}` is the pseudo-derivative, not the derivative of
    the Heaviside step (which is zero almost everywhere). Rate cells also give ``tangent``, the step and its
    Jacobian applied to ``k`` directions in closed form (what :mod:`rnnnotes.lyapunov` uses when present).
    """

    step: Callable
    pack: Callable
    unpack: Callable
    differentiable: torch.Tensor
    tangent: Callable = None  # (h, x, Q) -> (step(h, x), D Q) in closed form, Q (B, d, k); None: use autodiff


def transposed_product(w, Q):
    """:math:`W^T Q` for a stack ``Q (B, n, k)``, computed as :math:`(Q^T W)^T`: one matrix product over the folded
    stack instead of a batched product with a transposed copy of ``W`` (2.6x faster at n = 256, k = 64)."""
    return (Q.mT @ w).mT


def _no_self_connections(w_rec):
    """``w_rec`` with its diagonal forced to zero, so autapses never act and never receive gradient."""
    return w_rec * (1.0 - torch.eye(w_rec.shape[0], dtype=w_rec.dtype, device=w_rec.device))


class RecurrentLayer(nn.Module):
    """Shared weights of a recurrent layer: ``w_in ~ N(0, gain/n_in)``, ``w_rec ~ N(0, gain/n)``, zero diagonal.

    ``seed=None`` draws a seed (kept in ``self.seed``); the weights come from the stream ``(seed, "weights")``.
    """

    n_delay = 1
    readout_variable = "z"  # the output field a readout reads

    def __init__(self, n_in, n, params, *, gain=1.0, seed=None):
        super().__init__()
        require_count(n_in=n_in, n=n)
        require_positive(gain=gain)
        self.n_in, self.n, self.params = int(n_in), int(n), params
        self.seed = resolve_seed(seed)
        self._graphs = {}  # CUDA graphs of the fused time loop, by shapes (rnnnotes.fused)
        g = generator(self.seed, "weights")
        self.w_in = nn.Parameter(torch.randn(n_in, n, generator=g) * math.sqrt(gain / n_in))
        self.w_rec = nn.Parameter(_no_self_connections(torch.randn(n, n, generator=g) * math.sqrt(gain / n)))

    @property
    def alpha(self):
        """Membrane leak per step."""
        return self.params.alpha

    def recurrent_weights(self):
        return _no_self_connections(self.w_rec)

    def input_current(self, x):
        """Feed-forward current ``x @ W_in`` for all steps at once, ``(T, B, n)``."""
        return x @ self.w_in

    def step_weights(self):
        """The recurrent weights as the step uses them."""
        return self.recurrent_weights()

    def step(self, input_current, state, w_rec=None, recurrent=None):
        """One step; ``input_current`` is the feed-forward current at this step, ``(B, n)``."""
        require_shape("input_current", input_current, (None, self.n))
        F.check_state(state, self.state_type, input_current.shape[0], self.n, input_current.dtype, self.n_delay)
        return self._step(input_current, state, self.step_weights() if w_rec is None else w_rec, recurrent)

    def _step(self, input_current, state, w_rec, recurrent):
        return self.step_function(input_current, state, self.step_params(), w_rec,
                                  recurrent=recurrent or F.recurrent_input)

    def step_params(self):
        """The params object handed to the step function."""
        return self.params

    def forward(self, x, state=None, *, recurrent=None, fast=None, checkpoint=None, final=False):
        """Run ``x (T, B, n_in)`` from ``state`` (None: :meth:`initial_state`); ``recurrent(state, w_rec)`` replaces
        ``recurrent_input`` (credit rules). ``fast``: the fused time loop of :mod:`rnnnotes.fused` where it applies
        (``None``), always (``True``: an error where it cannot) or never (``False``: the plain per-step path).
        ``checkpoint=k``: the plain path in chunks of ``k`` steps whose intermediates are recomputed in the backward
        pass (activation checkpointing). ``final=True`` returns ``(output, state after the last step)``, on either
        path (:meth:`_final_state` reads it off the fused outputs); input currents still in flight on delayed
        synapses are not part of a state."""
        require_shape("x", x, (None, None, self.n_in))
        if x.shape[0] == 0:
            raise ValueError(f"x must have at least one time step, got shape {tuple(x.shape)}")
        if x.dtype != self.w_in.dtype:
            raise ValueError(f"x must have the weights' dtype {self.w_in.dtype}, got {x.dtype}")
        if state is None:
            state = self.initial_state(x.shape[1], device=x.device, dtype=x.dtype)
        else:
            F.check_state(state, self.state_type, x.shape[1], self.n, x.dtype, self.n_delay)
        current, w_rec, params = self.input_current(x), self.step_weights(), self.step_params()
        if checkpoint is not None:
            require_count(checkpoint=checkpoint)
            if fast:
                raise ValueError("checkpoint runs the plain path; the fused path saves only its outputs already")
            if final:
                raise ValueError("checkpoint returns no final state; final=True runs without it")
            return self._chunked(current, w_rec, state, params, recurrent or F.recurrent_input, int(checkpoint))
        cut = fused.choose(fast, recurrent, (current, w_rec, *state), vmappable=self.state_type is RateState)
        if cut is None:
            out, last = self._loop(current, w_rec, state, params, recurrent or F.recurrent_input)
            return (out, last) if final else out
        recurrent = F.cut_presynaptic if cut else F.recurrent_input

        def plain(current, w_rec, *state_and_constants):
            state_ = self.state_type(*state_and_constants[:len(state)])
            return tuple(self._loop(current, w_rec, state_, params, recurrent)[0])
        out = self._fused(current, w_rec, state, params, plain, cut)
        return (out, self._final_state(out, state, params)) if final else out

    def _final_state(self, out, state, params):
        """The state after the last step of a fused run, read off its outputs ``(T, B, n)``: ``v_T``, ``z_T``."""
        return RateState(v=out.v[-1], z=out.z[-1])

    def _loop(self, current, w_rec, state, params, recurrent):
        """The plain path: the step function once per step of ``current (T, B, n)``; ``(outputs, final state)``."""
        step, outputs = self.step_function, []
        for i_t in current:
            out, state = step(i_t, state, params, w_rec, recurrent=recurrent)
            outputs.append(out)
        return type(outputs[0])(*(torch.stack(o) for o in zip(*outputs))), state

    def _chunked(self, current, w_rec, state, params, recurrent, steps):
        """:meth:`_loop` over chunks of ``steps`` steps under ``torch.utils.checkpoint``: autograd keeps only each
        chunk's outputs and final state, and reruns the chunk in the backward pass."""
        outputs = []
        for chunk in current.split(steps):
            out, state = torch.utils.checkpoint.checkpoint(self._loop, chunk, w_rec, state, params, recurrent,
                                                           use_reentrant=False)
            outputs.append(out)
        return type(outputs[0])(*(torch.cat(o) for o in zip(*outputs)))

    def _zeros(self, batch, width, device, dtype):
        require_count(batch=batch)
        return torch.zeros(batch, width, device=device or self.w_in.device, dtype=dtype or self.w_in.dtype)

    def state_map(self):
        """This cell's step on a flat state (see :class:`StateMap`); the weights are read at every call."""
        if self.n_delay != 1:
            raise ValueError(f"state_map needs n_delay = 1 (delayed inputs would need past inputs), got "
                             f"n_delay={self.n_delay}")
        layout = self._layout()
        widths = [w for _, w, _ in layout]

        def pack(state):
            return torch.cat([getattr(state, name) for name, _, _ in layout], dim=-1)

        def unpack(h):
            parts = torch.split(h, widths, dim=-1)
            return self._from_parts({name: p if grad else p.detach() for (name, _, grad), p in zip(layout, parts)})

        def step(h, x):
            return pack(self._step(self.input_current(x), unpack(h), self.step_weights(), None)[1])

        differentiable = torch.cat([torch.full((w,), grad) for _, w, grad in layout])
        return StateMap(step=step, pack=pack, unpack=unpack, differentiable=differentiable)
