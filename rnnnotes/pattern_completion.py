"""Auto-associative memory within an episode (BOHP; differentiable plasticity): binary patterns shown, then one of
them with bits zeroed as a cue; the network must complete it at the last step. With its loss and metrics."""
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .checks import require_integer, require_nonnegative, require_positive


class Episode(NamedTuple):
    u: torch.Tensor  # (T, B, n) the network's input, scaled
    target: torch.Tensor  # (B, n) the cued pattern; NaN on the bias neuron (not scored)
    cue: torch.Tensor  # (B, n_bits) the degraded pattern, unscaled (0 where a bit was removed)
    patterns: torch.Tensor  # (n_patterns, B, n_bits)

    def to(self, device):
        return Episode(*(t.to(device) for t in self))


def _balanced(n_bits, generator):
    signs = torch.ones(n_bits)
    signs[n_bits // 2:] = -1.0
    return signs[torch.randperm(n_bits, generator=generator)]


def most_orthogonal_patterns(n_bits, max_draws=2_500):
    """The most mutually orthogonal balanced +-1 patterns of ``n_bits`` (even) that :func:`orthogonal_patterns`
    draws: 1 unless ``n_bits`` is a multiple of 4 (two balanced patterns are orthogonal only if both are +1 on
    ``n_bits / 4`` bits), else as many as a set is expected to take at most ``max_draws`` draws. A draw is orthogonal
    to one pattern with chance ``q = C(n/2, n/4)^2 / C(n, n/2)`` and to ``k`` with about ``q^k``, so a set of ``K``
    takes about ``sum_{k<K} q^-k`` draws (measured: 1 to 1.4 times that). 7 of 28 bits, 5 of 100, 3 of 1000."""
    if n_bits % 4:
        return 1
    log_q = 4 * math.lgamma(n_bits / 2 + 1) - 4 * math.lgamma(n_bits / 4 + 1) - math.lgamma(n_bits + 1)
    count, draws = 1, 1.0
    while count < n_bits - 1 and draws + math.exp(-count * log_q) <= max_draws:
        draws += math.exp(-count * log_q)
        count += 1
    return count


def _check_orthogonal(n_patterns, n_bits):
    if n_bits % 2:
        raise ValueError(f"n_bits must be even for balanced patterns, got n_bits={n_bits}")
    most = most_orthogonal_patterns(n_bits)
    if n_patterns > most:
        why = ("two balanced patterns are orthogonal only if n_bits is a multiple of 4" if n_bits % 4 else
               "more take too many draws by rejection sampling")
        raise ValueError(f"n_patterns must be at most {most} for n_bits={n_bits} ({why}), got n_patterns={n_patterns}")


def orthogonal_patterns(n_patterns, n_bits, *, generator, max_tries=10_000, restarts=100):
    """``(n_patterns, n_bits)`` mutually orthogonal +-1 patterns with as many +1 as -1, by rejection sampling as in
    BOHP: each pattern is drawn until it is orthogonal to those before it. More than
    :func:`most_orthogonal_patterns` are refused (``ValueError``). A set not complete within ``max_tries`` draws (a
    slow one, or a dead end: no balanced pattern is orthogonal to those drawn) is drawn again from the start, up to
    ``restarts`` times. At the largest accepted counts, 4 to 1000 bits, at most 1 % of the sets measured needed more
    than one start, so a set is almost always the first one drawn, as it was with a single start (the default task's
    episodes are unchanged)."""
    _check_orthogonal(n_patterns, n_bits)
    for _ in range(restarts):
        found = []
        for _ in range(max_tries):
            candidate = _balanced(n_bits, generator)
            if all(float(candidate @ p) == 0.0 for p in found):
                found.append(candidate)
                if len(found) == n_patterns:
                    return torch.stack(found)
    raise ValueError(f"n_patterns={n_patterns} orthogonal balanced patterns of n_bits={n_bits} were not found in "
                     f"{restarts} sets of {max_tries} draws")


@dataclass(frozen=True)
class CompletionTask:
    """One episode per call, ``task(batch_size, generator=g) -> Episode``: ``n_patterns`` patterns of ``n_bits``
    (``"orthogonal"``: balanced, mutually orthogonal, BOHP, at most :func:`most_orthogonal_patterns`; ``"random"``:
    i.i.d. +-1, differentiable plasticity), ``n_cycles`` cycles, each showing every pattern once in a shuffled order
    for ``present_steps`` steps followed by ``gap_steps`` zero steps; then one of the patterns with a fraction
    ``degrade`` of its bits zeroed (``exact``: exactly that many, else each bit with that probability) for
    ``cue_steps`` steps. Inputs are multiplied by ``scale``; with ``bias`` an extra neuron receives
    ``bias_input * scale`` at every step."""

    n_bits: int = 28
    n_patterns: int = 3
    patterns: str = "orthogonal"
    n_cycles: int = 2
    present_steps: int = 6
    gap_steps: int = 4
    cue_steps: int = 6
    degrade: float = 0.5
    exact: bool = True
    scale: float = 20.0
    bias: bool = True
    bias_input: float = 10.0

    def __post_init__(self):
        require_integer(n_bits=self.n_bits, n_patterns=self.n_patterns, n_cycles=self.n_cycles,
                        present_steps=self.present_steps, gap_steps=self.gap_steps, cue_steps=self.cue_steps)
        require_positive(n_bits=self.n_bits, n_patterns=self.n_patterns, n_cycles=self.n_cycles,
                         present_steps=self.present_steps, cue_steps=self.cue_steps, scale=self.scale)
        require_nonnegative(gap_steps=self.gap_steps)
        if self.patterns not in ("orthogonal", "random"):
            raise ValueError(f"patterns must be 'orthogonal' or 'random', got {self.patterns!r}")
        if self.patterns == "orthogonal":
            _check_orthogonal(self.n_patterns, self.n_bits)
        if not 0.0 <= self.degrade < 1.0:
            raise ValueError(f"degrade must be a fraction in [0, 1), got {self.degrade!r}")

    @classmethod
    def bohp(cls):
        """BOHP's ``net.py``: 28 bits + a bias neuron, 3 orthogonal balanced patterns, exactly half the bits cued."""
        return cls()

    @classmethod
    def differentiable_plasticity(cls):
        """Differentiable plasticity's ``simplest.py``: 1000 random bits, 5 patterns, each bit of the cue kept with
        probability 1/2, no bias neuron."""
        return cls(n_bits=1000, n_patterns=5, patterns="random", exact=False, bias=False)

    @property
    def n(self):
        """Neurons the network needs: one per bit, and the bias neuron."""
        return self.n_bits + int(self.bias)

    @property
    def n_steps(self):
        return self.n_cycles * self.n_patterns * (self.present_steps + self.gap_steps) + self.cue_steps

    def _one(self, generator):
        if self.patterns == "orthogonal":
            patterns = orthogonal_patterns(self.n_patterns, self.n_bits, generator=generator)
        else:
            patterns = torch.randint(0, 2, (self.n_patterns, self.n_bits), generator=generator) * 2.0 - 1.0
        shown = torch.zeros(self.n_steps, self.n_bits)
        period = self.present_steps + self.gap_steps
        for cycle in range(self.n_cycles):
            for slot, index in enumerate(torch.randperm(self.n_patterns, generator=generator).tolist()):
                start = (cycle * self.n_patterns + slot) * period
                shown[start:start + self.present_steps] = patterns[index]
        target = patterns[int(torch.randint(self.n_patterns, (1,), generator=generator))]
        if self.exact:
            keep = torch.ones(self.n_bits)
            keep[torch.randperm(self.n_bits, generator=generator)[:int(self.degrade * self.n_bits)]] = 0.0
        else:
            keep = (torch.rand(self.n_bits, generator=generator) >= self.degrade).float()
        shown[-self.cue_steps:] = target * keep
        return shown, target, target * keep, patterns

    def __call__(self, batch_size, *, generator):
        require_integer(batch_size=batch_size)
        require_positive(batch_size=batch_size)
        shown, target, cue, patterns = (torch.stack(p, dim=-2) for p in
                                        zip(*(self._one(generator) for _ in range(batch_size))))
        u = shown * self.scale
        if self.bias:
            u = torch.cat([u, torch.full((*u.shape[:2], 1), self.bias_input * self.scale)], dim=-1)
            target = torch.cat([target, torch.full((batch_size, 1), float("nan"))], dim=-1)
        return Episode(u=u, target=target, cue=cue, patterns=patterns)


def completion_objective(model, episode, rule=None):
    """``(loss, metrics)`` for :func:`rnnnotes.train.fit`: BOHP's loss, 1/2 the squared error of the pattern
    neurons at the last step, summed over neurons and averaged over the batch; metrics ``loss``, ``abs_error``
    (the original's sum of |e|), ``bit_error`` (fraction of pattern bits with the wrong sign) and ``restored``
    (fraction of the cue's zeroed bits whose sign is restored)."""
    y = model(episode.u).y[-1]
    n_bits, batch = episode.cue.shape[-1], y.shape[0]
    error = torch.where(torch.isnan(episode.target), 0.0, y - episode.target)
    loss = 0.5 * error.pow(2).sum() / batch
    wrong = torch.sign(y[:, :n_bits]) != episode.target[:, :n_bits]
    zeroed = episode.cue == 0
    metrics = {"loss": loss.item(), "abs_error": error.abs().sum().item() / batch,
               "bit_error": wrong.float().mean().item(),
               "restored": 1.0 - (wrong & zeroed).sum().item() / max(zeroed.sum().item(), 1)}
    return loss, metrics
