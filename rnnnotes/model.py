"""A recurrent layer with a leaky linear readout: the network every training notebook uses."""
import math
from typing import Any, NamedTuple

import torch
from torch import nn

from . import fused
from .checks import require_positive
from .functional import apply
from .seeding import generator, resolve_seed


class LowPass(torch.autograd.Function):
    r""":math:`y_t = \kappa y_{t-1} + (1 - \kappa) x_t` from :math:`y_{-1} = 0` along dimension 0 (``reverse``: from
    the last step back to the first): on a GPU as matmuls over chunks of steps (:func:`lowpass_chunked`), elsewhere
    one ``lerp`` per step into the output. The filter's adjoint is the same filter run the other way in time,
    :math:`\partial L / \partial x_s = \sum_{t \ge s} (1 - \kappa) \kappa^{t-s} \partial L / \partial y_t`, so the
    backward is this function again and differentiable to any order."""

    @staticmethod
    def forward(x, kappa, reverse):
        if x.is_cuda:  # a few kernels for the whole sequence instead of one launch per step
            return lowpass_chunked(x.flip(0), kappa).flip(0) if reverse else lowpass_chunked(x, kappa)
        y, previous = torch.empty_like(x), torch.zeros_like(x[0])
        for t in range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0]):
            previous = torch.lerp(x[t], previous, kappa, out=y[t])
        return y

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.kappa, ctx.reverse = inputs[1:]

    @staticmethod
    def backward(ctx, grad):
        return apply(LowPass, grad, ctx.kappa, not ctx.reverse), None, None


def lowpass_chunked(x, kappa, chunk=32):
    r"""The forward filter of :class:`LowPass` as two matmuls. Within each chunk of ``C = chunk`` steps,
    :math:`\ell_{kC+c} = \sum_{s \le c} (1 - \kappa) \kappa^{c-s} x_{kC+s}`; the chunks' last values carry over as
    :math:`e_k = \sum_{j \le k} \kappa^{C(k-j)} \ell_{jC+C-1}` (the filtered value at the end of chunk ``k``), and
    :math:`y_{kC+c} = \ell_{kC+c} + \kappa^{c+1} e_{k-1}`. Every power of :math:`\kappa` is at most 1, so nothing
    grows; the sums differ from the recursion by rounding only."""
    steps, size = x.shape[0], x[0].numel()
    n_chunks = -(-steps // chunk)
    xs = torch.nn.functional.pad(x.reshape(steps, size), (0, 0, 0, n_chunks * chunk - steps))
    c, k = torch.arange(chunk, dtype=torch.float64), torch.arange(n_chunks, dtype=torch.float64)
    within = torch.where(c[:, None] >= c, (1 - kappa) * kappa ** (c[:, None] - c).clamp(min=0), 0.0)
    across = torch.where(k[:, None] >= k, kappa ** (chunk * (k[:, None] - k)).clamp(min=0), 0.0)
    local = torch.matmul(within.to(x), xs.view(n_chunks, chunk, size))
    ends = across.to(x) @ local[:, -1]
    local[1:].add_(ends[:-1, None] * (kappa ** (c + 1)).to(x)[:, None])
    return local.view(n_chunks * chunk, size)[:steps].view(x.shape)


def readout_matmul(psp, w_out):
    """The readout ``psp @ W_out``: the exact default that credit rules may replace (e.g. random feedback)."""
    return psp @ w_out


class Readout(nn.Module):
    r"""Leaky readout of the LSNN tutorials.

    .. math:: \mathrm{psp}_t = \kappa\, \mathrm{psp}_{t-1} + (1 - \kappa) z_t, \qquad
              y_t = \mathrm{psp}_t W_{out} + b_{out}, \qquad \kappa = e^{-dt/\tau_{out}}

    ``tau_out=None`` reads ``z`` directly (``psp = z``). ``W_out`` is Glorot-uniform from the stream
    ``(seed, "readout")`` (``seed=None`` draws one, kept in ``self.seed``), ``b_out`` starts at 0.
    """

    def __init__(self, n, n_out, *, tau_out=None, dt=1.0, bias=True, seed=None):
        super().__init__()
        require_positive(n=n, n_out=n_out, dt=dt)
        if tau_out is not None:
            require_positive(tau_out=tau_out)
        self.kappa = 0.0 if tau_out is None else math.exp(-dt / tau_out)
        self.seed = resolve_seed(seed)
        g = generator(self.seed, "readout")
        limit = math.sqrt(6.0 / (n + n_out))
        self.w_out = nn.Parameter((torch.rand(n, n_out, generator=g) * 2 - 1) * limit)
        self.b_out = nn.Parameter(torch.zeros(n_out)) if bias else None

    def filter(self, z):
        """The low-pass filtered activity ``psp`` of ``z (T, B, n)``: :class:`LowPass`, or op by op where
        :func:`rnnnotes.fused.choose` picks the plain path."""
        if self.kappa == 0.0:
            return z
        if fused.choose(None, None, (z,)) is None:
            return self._filter_plain(z)
        return apply(LowPass, z, self.kappa, False)

    def _filter_plain(self, z):
        psp, out = torch.zeros_like(z[0]), []
        for z_t in z:
            psp = self.kappa * psp + (1.0 - self.kappa) * z_t
            out.append(psp)
        return torch.stack(out)

    def forward(self, z, *, matmul=None):
        out = (matmul or readout_matmul)(self.filter(z), self.w_out)
        return out if self.b_out is None else out + self.b_out


class NetworkOutput(NamedTuple):
    out: torch.Tensor  # (T, B, n_out) readout
    hidden: Any  # the cell's output NamedTuple: z (T, B, n), and v, threshold for spiking cells


class Carry:
    """The cell state one batch leaves for the next (training as the LSNN tutorials run it): a forward pass handed
    this carry starts from ``state`` (None: the cell's zero state) and leaves its final state here, detached (no
    gradient flows across batches)."""

    def __init__(self, state=None):
        self.state = state


class Network(nn.Module):
    """``cell`` followed by ``readout``. A credit ``rule`` (training only) swaps how gradients flow, never values."""

    def __init__(self, cell, readout):
        super().__init__()
        if readout.w_out.shape[0] != cell.n:
            raise ValueError(f"readout expects {readout.w_out.shape[0]} neurons, the cell has {cell.n}")
        self.cell, self.readout = cell, readout

    def forward(self, x, *, rule=None, carry=None):
        """Readout of the cell's activity (its ``readout_variable``, ``z`` unless the cell says otherwise);
        ``rule`` (training only) may add a zero-valued credit term to ``z`` (refused for cells read from elsewhere);
        ``carry`` (a :class:`Carry`) holds the initial state and receives the final one."""
        read = getattr(self.cell, "readout_variable", "z")
        if rule and rule.side and read != "z":
            raise ValueError(f"rule {rule.name} sends credit through z, but {type(self.cell).__name__} is read out "
                             f"from {read}")
        recurrent, initial = rule.recurrent if rule else None, carry.state if carry else None
        if carry is None:
            hidden = self.cell(x, recurrent=recurrent)
        else:
            hidden, final = self.cell(x, carry.state, recurrent=recurrent, final=True)
            carry.state = type(final)(*(s.detach() for s in final))
        z = hidden.z + rule.side(self.cell, hidden, initial) if rule and rule.side else getattr(hidden, read)
        return NetworkOutput(out=self.readout(z, matmul=rule.readout if rule else None), hidden=hidden)
