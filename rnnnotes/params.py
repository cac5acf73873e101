"""Frozen parameter sets of the cells, with units and the papers' presets.

Times are in ms, ``thr`` in the units of the input current (a.u.). A params object is validated when it is made,
so a negative time constant fails where it is written, with the field named. ``replace(p, field=value)``
(``dataclasses.replace``) makes a variant.
"""
import math
from dataclasses import dataclass, fields, replace
from functools import cached_property

import torch

from .checks import require_integer, require_nonnegative, require_positive

ACTIVATIONS = ("tanh", "relu", "linear")


def _require_beta(beta):
    """``beta`` is a number >= 0 or a tensor of per-neuron values >= 0."""
    if torch.is_tensor(beta):
        if beta.dim() != 1 or not bool((beta >= 0).all()):
            raise ValueError("beta must be a number >= 0 or a 1-d tensor of per-neuron values >= 0")
    elif isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")


def _require_spiking(p):
    require_positive(tau_m=p.tau_m, thr=p.thr, dt=p.dt, gamma=p.gamma, n_delay=p.n_delay)
    require_integer(n_ref=p.n_ref, n_delay=p.n_delay)
    if p.n_ref < 0:
        raise ValueError(f"n_ref must be a non-negative integer, got {p.n_ref!r}")


def with_overrides(cls, params, overrides):
    """``params`` (default ``cls()``) with the keyword ``overrides`` applied; unknown names raise ``ValueError``."""
    params = cls() if params is None else params
    if not isinstance(params, cls):
        raise ValueError(f"params must be a {cls.__name__}, got {type(params).__name__}")
    unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; fields: "
                         f"{', '.join(f.name for f in fields(cls))}")
    return replace(params, **overrides) if overrides else params


@dataclass(frozen=True)
class RateParams:
    r"""Leaky rate unit :math:`v_t = \alpha v_{t-1} + (1-\alpha) I_t`, :math:`z_t = \phi(v_t)`.

    ``tau`` (ms) membrane time constant, ``dt`` (ms) step, ``activation`` :math:`\phi` one of ``tanh``, ``relu``,
    ``linear``. A very small ``tau`` gives the memoryless RNN :math:`z_t = \phi(I_t)`.
    """

    tau: float = 20.0
    dt: float = 1.0
    activation: str = "tanh"

    def __post_init__(self):
        require_positive(tau=self.tau, dt=self.dt)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")

    @cached_property
    def alpha(self):
        """Leak per step, :math:`e^{-dt/\\tau}`."""
        return math.exp(-self.dt / self.tau)

    @classmethod
    def biolhess(cls):
        """BiolHessRNN's memoryless ReLU network (Liu et al. 2022): tau = 0.01 ms, so alpha = e^-100 and
        ``z_t = relu(x_t W_in + z_{t-1} W_rec)``."""
        return cls(tau=0.01, dt=1.0, activation="relu")

    @classmethod
    def leak_free(cls):
        """Gradient flossing's tanh map (Engelken 2023): tau = 0.001 ms, so alpha = e^-1000, exactly 0 in floating
        point, and ``v_t = I_t + tanh(v_{t-1}) W_rec``."""
        return cls(tau=1e-3, dt=1.0, activation="tanh")

    @classmethod
    def modprop(cls):
        """ModProp's delayed-XOR network (Liu et al. 2022): ReLU units, tau = 100 ms, dt = 1 ms."""
        return cls(tau=100.0, dt=1.0, activation="relu")


@dataclass(frozen=True)
class VanillaInit:
    r"""Initialisation of gradient flossing's RNN (Engelken 2023), :class:`rnnnotes.cells.VanillaRNN`:
    :math:`J_{ij} \sim g\,\mathcal N(0, 1)/\sqrt N + \bar g / N` (``orthogonal``: ``g`` times the Q factor of a
    Gaussian matrix), :math:`W_{in} \sim` ``input_std`` :math:`\mathcal N(0,1) +` ``input_mean``,
    :math:`b \sim` ``bias_offset`` + ``bias_scale`` :math:`\mathcal U(0, 1)`; the learned initial state settles
    for ``settle_steps`` steps of the autonomous map from :math:`\mathcal N(0, 1)`."""

    g: float = 1.0
    gbar: float = 0.0
    orthogonal: bool = False
    input_std: float = 1.0
    input_mean: float = 0.0
    bias_scale: float = 0.1
    bias_offset: float = 0.0
    settle_steps: int = 100

    def __post_init__(self):
        require_nonnegative(g=self.g, input_std=self.input_std, bias_scale=self.bias_scale)
        require_integer(settle_steps=self.settle_steps)
        require_nonnegative(settle_steps=self.settle_steps)


@dataclass(frozen=True, eq=False)
class ALIFParams:
    r"""LSNN neuron (Bellec et al. 2018): membrane ``tau_m`` and adaptation ``tau_a`` time constants (ms),
    adaptation strength ``beta`` (a number, or a tensor of per-neuron values; 0 is a LIF neuron), baseline
    threshold ``thr``, ``n_ref`` refractory steps, step ``dt`` (ms), pseudo-derivative scale ``gamma`` and synaptic
    delays drawn from ``0 .. n_delay - 1`` steps.
    """

    tau_m: float = 20.0
    tau_a: float = 200.0
    beta: object = 1.6
    thr: float = 0.01
    n_ref: int = 2
    dt: float = 1.0
    gamma: float = 0.3
    n_delay: int = 1

    def __post_init__(self):
        _require_spiking(self)
        require_positive(tau_a=self.tau_a)
        _require_beta(self.beta)

    @cached_property
    def alpha(self):
        """Membrane leak per step, :math:`e^{-dt/\\tau_m}`."""
        return math.exp(-self.dt / self.tau_m)

    @cached_property
    def rho(self):
        """Adaptation decay per step, :math:`e^{-dt/\\tau_a}`."""
        return math.exp(-self.dt / self.tau_a)

    @classmethod
    def bellec2018_store_recall(cls):
        """The LSNN tutorial's store-recall neurons: tau_a = 1200 ms, beta = 1.7, 3 refractory steps, delays 0-9 ms."""
        return cls(tau_a=1200.0, beta=1.7, thr=0.01, n_ref=3, n_delay=10)

    @classmethod
    def bellec2018_smnist(cls):
        """The LSNN tutorial's sequential-MNIST neurons: tau_a = 700 ms, beta = 1.8, 5 refractory steps, delays
        0-9 ms."""
        return cls(tau_a=700.0, beta=1.8, thr=0.01, n_ref=5, n_delay=10)


@dataclass(frozen=True)
class LIFParams:
    """Leaky integrate-and-fire neuron: the ALIF neuron without adaptation (same fields, no ``tau_a``/``beta``)."""

    tau_m: float = 20.0
    thr: float = 0.03
    n_ref: int = 0
    dt: float = 1.0
    gamma: float = 0.3
    n_delay: int = 1

    def __post_init__(self):
        _require_spiking(self)

    @cached_property
    def alpha(self):
        """Membrane leak per step, :math:`e^{-dt/\\tau_m}`."""
        return math.exp(-self.dt / self.tau_m)
