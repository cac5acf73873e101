r"""Gradient flossing (Engelken 2023): gradient steps on :math:`\frac1k \sum_{i \le k} (\lambda_i - \lambda^*)^2`,
the squared distance of the ``k`` largest Lyapunov exponents of the forward dynamics from a target (0: neither
vanishing nor exploding gradients), before training and between task steps. The mean over the ``k`` exponents is
the original code's; the paper writes the sum (:func:`rnnnotes.lyapunov.flossing_loss` has both), and under Adam
the two take the same steps up to Adam's epsilon.

A :class:`Flossing` plugs into :func:`rnnnotes.train.fit` (``Training(flossing=...)``), which calls
``before_step(step)`` ahead of every task step. Each flossing step draws a fresh input sequence (batch 1, the
first ``n_steps`` steps of ``inputs(i)``), measures the exponents on the cell's state map from its initial state
(:func:`rnnnotes.lyapunov.lyapunov_spectrum`, same start basis every time) and takes one step of its own Adam on
the parameters ``names`` only (the original: ``W_in``, ``J``, ``b``; never the readout or the initial state).
"""
import math
from dataclasses import dataclass

import torch

from .checks import require_count, require_integer, require_nonnegative, require_positive
from .lyapunov import flossing_loss, lyapunov_spectrum


def cell_state_map(cell, coordinates=None):
    """``cell``'s :class:`~rnnnotes.recurrent.StateMap`, in ``coordinates`` when given (e.g. ``"rate"``)."""
    return cell.state_map() if coordinates is None else cell.state_map(coordinates)


def cell_spectrum(cell, x, k, *, warmup, seed=0, coordinates=None):
    """The ``k`` largest exponents of ``cell`` driven by ``x (T, B, n_in)`` from its initial state (its state map
    in ``coordinates`` when given), averaged over the ``B`` trajectories."""
    state_map = cell_state_map(cell, coordinates)
    h0 = state_map.pack(cell.initial_state(x.shape[1], device=x.device, dtype=x.dtype))
    return lyapunov_spectrum(state_map, h0, x, k, warmup=warmup, seed=seed)


def spectrum_evaluator(x, k, *, warmup, seed=0, coordinates=None):
    """``evaluate(model) -> {"lambda_1": ..., "lambda_k": ...}`` on the fixed input ``x``: the largest and the
    ``k``-th exponent, for following the spectrum during training."""
    def evaluate(model):
        exponents = cell_spectrum(model.cell, x.to(next(model.parameters()).device), k, warmup=warmup, seed=seed,
                                  coordinates=coordinates)
        return {"lambda_1": exponents[0].item(), "lambda_k": exponents[-1].item()}
    return evaluate


def original_warmup(n_steps):
    """The original's warm-up of a spectrum over ``n_steps`` steps: ``10 + ceil(n_steps / 10)`` (16 for 55)."""
    return 10 + math.ceil(n_steps / 10)


@dataclass(frozen=True)
class FlossingSchedule:
    """When and how to floss (the original's arguments in brackets). Before task step 0: ``pre_steps`` flossing
    steps [Ep]. Before task step ``s`` with ``(s + 1) % inter_every == 0``, for at most ``inter_max`` episodes
    [Ef, Ni]: ``inter_steps`` [Ei]. ``n_exponents`` [nLE] exponents toward ``target`` [Lwnt], measured over
    ``n_steps`` [Tp] steps of which ``warmup`` are not counted (``None``: the original's ``10 + ceil(Tp / 10)``);
    Adam with ``lr``, ``betas`` and no clipping, its state apart from the task optimiser's."""

    n_exponents: int = 1
    pre_steps: int = 0
    inter_steps: int = 0
    inter_every: int = 0
    inter_max: int = 0
    target: float = 0.0
    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    n_steps: int = 55
    warmup: int = None
    names: tuple = ("cell.w_in", "cell.w_rec", "cell.b")

    def __post_init__(self):
        counts = dict(pre_steps=self.pre_steps, inter_steps=self.inter_steps, inter_every=self.inter_every,
                      inter_max=self.inter_max)
        require_integer(n_exponents=self.n_exponents, n_steps=self.n_steps, **counts)
        require_nonnegative(**counts)
        require_positive(n_exponents=self.n_exponents, n_steps=self.n_steps, lr=self.lr)
        if not 0 <= self.counted_from < self.n_steps:
            default = " (the default, 10 + ceil(n_steps / 10): raise n_steps)" if self.warmup is None else ""
            raise ValueError(f"warmup must be in [0, n_steps = {self.n_steps}), got {self.counted_from}{default}")

    @property
    def counted_from(self):
        """The warm-up actually used."""
        return original_warmup(self.n_steps) if self.warmup is None else self.warmup

    def steps_before(self, step, episodes):
        """``(flossing steps, is an inter-flossing episode)`` due before task step ``step`` (0-indexed)."""
        n = self.pre_steps if step == 0 else 0
        inter = bool(self.inter_every and self.inter_steps and (step + 1) % self.inter_every == 0
                     and episodes < self.inter_max)
        return n + (self.inter_steps if inter else 0), inter


class Flossing:
    """Flossing of ``model.cell`` by ``schedule`` on input sequences ``inputs(i)`` (a
    :class:`~rnnnotes.tasks.TaskStream` or any callable returning a batch with ``x (T, B, n_in)``; trajectory 0 is
    used); ``seed`` fixes the start basis of every spectrum; ``coordinates`` is passed to the cell's
    ``state_map`` when given (e.g. ``"rate"`` for :class:`~rnnnotes.cells.VanillaRNN`, as the original)."""

    def __init__(self, model, schedule, inputs, *, seed=0, coordinates=None):
        every = dict(model.named_parameters())
        missing = [n for n in schedule.names if n not in every]
        if missing:
            raise ValueError(f"schedule.names must name parameters of the model; unknown: {missing}; "
                             f"parameters: {sorted(every)}")
        self.model, self.schedule, self.inputs, self.seed = model, schedule, inputs, seed
        self.coordinates = coordinates
        self.params = [every[n] for n in schedule.names]
        self.optimizer = torch.optim.Adam(self.params, lr=schedule.lr, betas=tuple(schedule.betas))
        self.done, self.episodes = 0, 0

    def spectrum(self, x):
        """The ``n_exponents`` largest exponents of the cell on input ``x (T, 1, n_in)`` from its initial state."""
        return cell_spectrum(self.model.cell, x, self.schedule.n_exponents, warmup=self.schedule.counted_from,
                             seed=self.seed, coordinates=self.coordinates)

    def step(self):
        """One flossing step on the next input sequence; returns ``(loss, exponents)`` (detached)."""
        device = self.params[0].device
        x = self.inputs(self.done).x[:self.schedule.n_steps, :1].to(device)
        if x.shape[0] < self.schedule.n_steps:
            raise ValueError(f"the flossing inputs have {x.shape[0]} steps, fewer than schedule.n_steps = "
                             f"{self.schedule.n_steps}")
        exponents = self.spectrum(x)
        loss = flossing_loss(exponents, self.schedule.target, reduction="mean")  # the original code
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        for p, g in zip(self.params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        self.optimizer.step()
        for p in self.params:
            p.grad = None
        self.done += 1
        return loss.detach(), exponents.detach()

    def run(self, n):
        """``n`` (>= 1) flossing steps; the log fields of the first and last."""
        require_count(n=n)
        losses = []
        for _ in range(n):
            loss, exponents = self.step()
            losses.append(loss.item())
        return {"floss_loss_first": losses[0], "floss_loss": losses[-1],
                "floss_lambda_max": exponents[0].item(), "floss_steps": self.done}

    def before_step(self, step):
        """The flossing due before task step ``step``, as fields for the step's log row (none if nothing ran)."""
        n, inter = self.schedule.steps_before(step, self.episodes)
        self.episodes += inter
        return self.run(n) if n else {}

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "done": self.done, "episodes": self.episodes}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.done, self.episodes = state["done"], state["episodes"]
