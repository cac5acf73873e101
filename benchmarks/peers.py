"""The same recurrent spiking layers in rnnnotes, norse and snntorch, with the same weights, as runnable
forward + backward passes (loss = sum of output spikes, gradients to the input and recurrent weights).

Like-for-like choices (no two libraries can be configured to each other exactly):
- ALIF: rnnnotes runs the given mix of LIF and adaptive neurons (the LSNN of the goal: 120 + 100); every neuron
  adapts in norse's LSNNRecurrent, so norse runs all n adaptive. n_ref = 0 and n_delay = 1 in rnnnotes (norse has
  neither refractoriness nor synaptic delays).
- norse tau_syn = dt, so its synaptic current is just last step's W x + W_rec z (no extra filter); tau_mem 20 ms,
  tau_adapt 200 ms, dt 1 ms, v_th = thr = 0.01; norse's jump beta = 1.6 (1 - exp(-dt/tau_a)) matches rnnnotes'
  threshold jump per spike; surrogate "triangle" with alpha = gamma = 0.3 (the Bellec pseudo-derivative).
- snntorch 1.0.0 has no adaptive-threshold neuron, so it is compared for LIF only: an input ``Linear`` applied
  to the whole sequence, then ``RLeaky`` (beta = exp(-dt/tau_m), reset by subtraction, its default arctan
  surrogate; its recurrent ``Linear`` has a bias, held at zero). Its weights are rnnnotes' times (1 - alpha),
  since rnnnotes scales the input of the membrane by (1 - alpha).
- Remaining differences: norse uses Euler decay and reset-to-zero, rnnnotes exact decay and reset by subtraction;
  norse's input reaches v one step later; norse projects the input inside the time loop, rnnnotes and snntorch
  with one matmul before it.
"""
import math
from typing import NamedTuple

import snntorch
import torch
from norse.torch import LIFParameters, LIFRecurrent, LSNNParameters, LSNNRecurrent

from rnnnotes.cells import ALIF, LIF

SHARED = dict(tau_m=20.0, thr=0.01, n_ref=0, dt=1.0, gamma=0.3, n_delay=1)


class Size(NamedTuple):
    """Input width, LIF and adaptive neurons (rnnnotes' ALIF layer; LIF layers have ``n`` neurons), batch, steps."""

    n_in: int
    n_regular: int
    n_adaptive: int
    batch: int
    steps: int

    @property
    def n(self):
        return self.n_regular + self.n_adaptive

    @classmethod
    def parse(cls, text):
        """``n_in x n x B x T`` (all neurons adaptive) or ``n_in x n_regular+n_adaptive x B x T``."""
        n_in, n, batch, steps = text.split("x")
        regular, adaptive = n.split("+") if "+" in n else (0, n)
        return cls(int(n_in), int(regular), int(adaptive), int(batch), int(steps))

    def __str__(self):
        n = f"{self.n_regular}+{self.n_adaptive}" if self.n_regular else str(self.n)
        return f"{self.n_in}x{n}x{self.batch}x{self.steps}"


def _weights(n_in, n, seed):
    """The benchmark's own weights (``x @ W`` convention), whatever either library draws."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_in, n, generator=g) / math.sqrt(n_in), torch.randn(n, n, generator=g) / math.sqrt(n)


def _norse_params(cls, **extra):
    t = torch.as_tensor
    return cls(tau_syn_inv=t(1 / 1e-3), tau_mem_inv=t(1 / 20e-3), v_leak=t(0.0), v_th=t(0.01), v_reset=t(0.0),
               method="triangle", alpha=0.3, **{k: t(v) for k, v in extra.items()})


def _with_weights(ours, theirs, seed):
    """Copy the benchmark's weights into an rnnnotes cell and a norse layer (norse computes ``x @ W.T``)."""
    w_in, w_rec = _weights(ours.n_in, ours.n, seed)
    with torch.no_grad():
        ours.w_in.copy_(w_in)
        ours.w_rec.copy_(w_rec)
        theirs.input_weights.copy_(ours.w_in.T)
        theirs.recurrent_weights.copy_(ours.recurrent_weights().T)
    return ours, theirs


def alif_pair(size, seed=0):
    """An rnnnotes ALIF layer and a norse LSNNRecurrent with the same weights and time constants."""
    ours = ALIF(size.n_in, size.n_regular, size.n_adaptive, tau_a=200.0, beta=1.6, seed=seed, **SHARED)
    p = _norse_params(LSNNParameters, tau_adapt_inv=1 / 200e-3, beta=1.6 * (1 - math.exp(-1 / 200)))
    return _with_weights(ours, LSNNRecurrent(size.n_in, size.n, p=p, dt=1e-3), seed)


def lif_pair(size, seed=0):
    """An rnnnotes LIF layer and a norse LIFRecurrent with the same weights and time constants."""
    ours = LIF(size.n_in, size.n, seed=seed, **SHARED)
    return _with_weights(ours, LIFRecurrent(size.n_in, size.n, p=_norse_params(LIFParameters), dt=1e-3), seed)


class SnnTorchLIF(torch.nn.Module):
    """snntorch's recurrent LIF layer over a time-first sequence: input ``Linear``, then ``RLeaky`` per step."""

    def __init__(self, ours):
        super().__init__()
        scale = 1 - ours.alpha
        self.input = torch.nn.Linear(ours.n_in, ours.n, bias=False)
        self.neurons = snntorch.RLeaky(beta=ours.alpha, linear_features=ours.n, threshold=ours.params.thr)
        with torch.no_grad():
            self.input.weight.copy_(scale * ours.w_in.T)
            self.neurons.recurrent.weight.copy_(scale * ours.recurrent_weights().T)
            self.neurons.recurrent.bias.zero_()

    def forward(self, x):
        spk, mem = self.neurons.reset_mem()  # RLeaky keeps its last state on the module
        spikes = []
        for current in self.input(x):
            spk, mem = self.neurons(current, spk, mem)
            spikes.append(spk)
        return torch.stack(spikes)


def passes(size, device, seed=0):
    """Forward + backward of each implementation on the same 50 Hz input spikes, by name."""
    alif, lsnn = alif_pair(size, seed)
    lif, norse_lif = lif_pair(size, seed)
    snn = SnnTorchLIF(lif)
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(size.steps, size.batch, size.n_in, generator=g) < 0.05).float().to(device)
    outputs = {"norse LSNN": lambda: lsnn(x)[0], "norse LIF": lambda: norse_lif(x)[0], "snntorch LIF": lambda: snn(x)}
    for name, cell in (("ALIF", alif), ("LIF", lif)):
        outputs[f"rnnnotes {name}"] = lambda cell=cell: cell(x, fast=True).z
        outputs[f"rnnnotes {name} plain"] = lambda cell=cell: cell(x, fast=False).z
    modules = [alif, lsnn, lif, norse_lif, snn]
    for m in modules:
        m.to(device)
    return {name: _backward(output, modules) for name, output in outputs.items()}


def _backward(output, modules):
    def run():
        for m in modules:
            m.zero_grad(set_to_none=True)
        z = output()
        z.sum().backward()
        return z
    return run
