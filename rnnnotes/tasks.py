"""Tasks as seeded batch generators: LSNN store-recall, ModProp's delayed XOR, sequential and row-wise MNIST,
gradient flossing's delayed parity and copy.

Every task returns a :class:`Batch` ``(x, y, mask)``: time-first input ``x (T, B, n_in)`` with dt = 1 ms, targets
``y`` for consecutive windows of ``window`` steps and ``mask`` marking the windows that carry one. The batch names
its loss: the cross-entropy of the readout averaged over each window (``losses.windowed_cross_entropy``), or for
the bit tasks a binary cross-entropy per step. Every stochastic function takes a ``generator``; :class:`TaskStream`
makes batch ``step`` a pure function of ``(seed, stream, step)``, so a resumed run sees exactly the data it would
have seen.
"""
import inspect
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import seeding
from .checks import require_integer, require_nonnegative, require_positive, require_shape
from .batch import Batch


def _require_int(**values):
    """Raise ``ValueError`` naming the first argument that is not a positive integer."""
    require_positive(**values)
    require_integer(**values)


def _check_arguments(make, kwargs):
    """Raise ``ValueError`` naming keyword arguments that ``make(generator=..., **kwargs)`` cannot take."""
    try:
        signature = inspect.signature(make)
    except (TypeError, ValueError):
        return
    parameters = signature.parameters
    name = getattr(make, "__name__", type(make).__name__)
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(kwargs) - set(parameters))
        if unknown:
            raise ValueError(f"{name} takes no argument {', '.join(map(repr, unknown))}; "
                             f"it takes {', '.join(p for p in parameters if p != 'generator')}")
    try:
        signature.bind(generator=None, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for {name}: {err}") from None


class TaskStream:
    """Batches of one task, each a pure function of ``(seed, stream, step)``: ``task_stream(step) -> Batch``.

    ``task_stream(step)`` calls ``make(generator=seeding.generator(seed, "data", stream, step), **kwargs)``, so
    the data of step ``k`` never depends on what was drawn before (bitwise resume), and the named streams of
    one seed (``"train"``, ``"validation"``, ``"test"``, ``"example"``, ...) are independent of each other and
    of every other stream of the run. ``seed=None`` draws a seed (kept in ``.seed``). ``make`` is a task
    function, a name in :data:`TASKS`, or any callable taking ``generator=`` (e.g. :class:`SMNIST`).
    Keyword arguments ``make`` cannot accept fail here; their values are checked by the task on the first call.
    """

    def __init__(self, make, *, seed, stream="train", **kwargs):
        make = get_task(make) if isinstance(make, str) else make
        if not callable(make):
            raise TypeError(f"make must be a task function or a task name, got {make!r}")
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"stream must be a non-empty string such as 'train' or 'test', got {stream!r}")
        _check_arguments(make, kwargs)
        self.make, self.seed, self.stream, self.kwargs = make, seeding.resolve_seed(seed), stream, dict(kwargs)

    def generator(self, step):
        """The fresh generator that batch ``step`` is drawn with: ``seeding.generator(seed, "data", stream, step)``."""
        require_integer(step=step)
        require_nonnegative(step=step)
        return seeding.generator(self.seed, "data", self.stream, step)

    def __call__(self, step):
        return self.make(generator=self.generator(step), **self.kwargs)

    def __repr__(self):
        args = [f"seed={self.seed}", f"stream={self.stream!r}"]
        args += [f"{k}={v!r}" for k, v in self.kwargs.items() if not torch.is_tensor(v)]
        return f"TaskStream({getattr(self.make, '__name__', self.make)!r}, {', '.join(args)})"


# --------------------------------------------------------------------------------------------------- store-recall

class StoreRecallTrials(NamedTuple):
    """A store-recall batch with the symbols behind it (for plots).

    ``symbols (n_symbols, B)``: 0 / 1 a value step showing that bit, 2 store, 3 recall.
    ``shown (n_symbols, B)``: the bit on the value channels (at a store step: the stored bit), -1 at recall.
    """

    batch: Batch
    symbols: torch.Tensor
    shown: torch.Tensor


def _valid_store_recall(seq):
    """Which sequences ``(L, n)`` the LSNN tutorial accepts: store and recall alternate S, R, ..., S, R (at
    least one pair, a store first, a recall last) and the step after every store is a value step."""
    store, recall = seq == 2, seq == 3
    open_stores = store.long().cumsum(0) - recall.long().cumsum(0)
    alternating = ((open_stores >= 0) & (open_stores <= 1)).all(0) & (open_stores[-1] == 0)
    value_after_store = ~store[-1] & ~(store[:-1] & (seq[1:] >= 2)).any(0)
    return store.any(0) & alternating & value_after_store


def _store_recall_symbols(batch_size, n_symbols, p_store, generator):
    """Rejection-sample ``(n_symbols, B)`` sequences: random bits overwritten by alternating store (2) / recall (3),
    each placed with probability ``p_store`` per step once the other one has appeared."""
    accepted, n_left = [], batch_size
    for _ in range(10_000):
        seq = torch.randint(0, 2, (n_symbols, n_left), generator=generator)
        place = torch.rand(n_symbols, n_left, generator=generator) < p_store
        waiting_for_store = torch.ones(n_left, dtype=torch.bool)
        for t in range(n_symbols):
            seq[t] = torch.where(place[t], torch.where(waiting_for_store, 2, 3), seq[t])
            waiting_for_store ^= place[t]
        seq = seq[:, _valid_store_recall(seq)]
        accepted.append(seq)
        n_left -= seq.shape[1]
        if n_left == 0:
            return torch.cat(accepted, dim=1)
    raise ValueError(f"no valid store-recall sequences in 10000 tries with n_symbols={n_symbols}, "
                     f"p_store={p_store}; increase n_symbols or move p_store away from 0 and 1")


def store_recall_trials(batch_size, *, generator, n_symbols=12, symbol_ms=200, n_channels=100, rate_hz=50.0,
                        p_store=1 / 7):
    """The LSNN store-recall task (Bellec et al. 2018, LSNN-official tutorial) with its symbols.

    ``n_symbols`` steps of ``symbol_ms`` each. Input channels form 4 groups of ``n_channels // 4``: value 0,
    value 1, store, recall; channels of an active group fire Poisson spikes with ``p = rate_hz * dt`` per step.
    Store and recall alternate, starting with store, each placed with probability ``p_store`` per step (the
    tutorial's ``1 / (1 + seq_delay)``); sequences are rejection-sampled until valid. During a store the value
    group shows the bit of the following step, which is then flipped with probability 1/2 (a distractor); no
    value group fires during a recall. The target of every recall step is the bit shown at the most recent
    store; ``y`` is -1 at all other steps, ``window = symbol_ms``.
    """
    _require_int(batch_size=batch_size, n_symbols=n_symbols, symbol_ms=symbol_ms, n_channels=n_channels)
    require_positive(rate_hz=rate_hz, p_store=p_store)
    if n_channels % 4:
        raise ValueError(f"n_channels must be a multiple of 4 (four equal groups), got {n_channels!r}")
    if rate_hz > 1000:
        raise ValueError(f"rate_hz must be at most 1000 (one spike per 1 ms step), got {rate_hz!r}")
    if p_store >= 1:
        raise ValueError(f"p_store must be below 1 (a store must be followed by a value step), got {p_store!r}")
    if n_symbols < 3:
        raise ValueError(f"n_symbols must be at least 3 (store, value, recall), got {n_symbols!r}")
    seq = _store_recall_symbols(batch_size, n_symbols, p_store, generator)
    store, recall = seq == 2, seq == 3
    shown = torch.where(seq < 2, seq, -1)
    shown[:-1] = torch.where(store[:-1], seq[1:], shown[:-1])  # a store shows the next step's bit ...
    flip = store[:-1] & (torch.rand(n_symbols - 1, batch_size, generator=generator) < 0.5)
    shown[1:] = torch.where(flip, 1 - shown[1:], shown[1:])  # ... which is then flipped half of the time
    y = torch.full_like(seq, -1)
    stored = torch.zeros(batch_size, dtype=seq.dtype)
    for t in range(n_symbols):
        stored = torch.where(store[t], shown[t], stored)
        y[t] = torch.where(recall[t], stored, -1)
    active = torch.stack([shown == 0, shown == 1, store, recall], dim=-1)  # (n_symbols, B, 4)
    active = active.repeat_interleave(n_channels // 4, dim=-1).repeat_interleave(symbol_ms, dim=0)
    spikes = torch.rand(active.shape, generator=generator) < rate_hz * 1e-3
    x = (spikes & active).float()
    return StoreRecallTrials(Batch(x, y, recall, int(symbol_ms)), torch.where(seq < 2, shown, seq), shown)


def store_recall(batch_size, *, generator, n_symbols=12, symbol_ms=200, n_channels=100, rate_hz=50.0,
                 p_store=1 / 7):
    """The :class:`Batch` of :func:`store_recall_trials` (same arguments, same draws)."""
    return store_recall_trials(batch_size, generator=generator, n_symbols=n_symbols, symbol_ms=symbol_ms,
                               n_channels=n_channels, rate_hz=rate_hz, p_store=p_store).batch


# ---------------------------------------------------------------------------------------------------- delayed XOR

@dataclass(frozen=True)
class XORCues:
    """The input of ModProp's delayed XOR: channel ``baseline``, Gaussian cue bumps of peak ``amplitude`` and
    width ``width_ms`` (ms), additive Gaussian noise of standard deviation ``noise_std``."""

    baseline: float = 0.02
    amplitude: float = 2.0
    width_ms: float = 25.0
    noise_std: float = 0.01

    def __post_init__(self):
        require_positive(amplitude=self.amplitude, width_ms=self.width_ms)
        require_nonnegative(baseline=self.baseline, noise_std=self.noise_std)


def delayed_xor(batch_size, *, generator, delay_ms=700, cue_ms=100, cues=XORCues()):
    r"""ModProp's delayed XOR (Liu et al. 2022): two cues ``delay_ms`` apart, label at the last step.

    ``T = cue_ms + delay_ms + cue_ms``, two channels at ``cues.baseline``. Cue bit ``i`` (uniform) of 1 adds
    :math:`a\,e^{-s^2 / (2 w^2)}`, ``s = linspace(-cue_ms/2, cue_ms/2, cue_ms)``, to channel ``i`` over its window
    (channel 0 in ``[0, cue_ms)``, channel 1 in ``[T - cue_ms, T)``). Gaussian noise of standard deviation
    ``cues.noise_std`` is added everywhere (the original's ``np.random.normal(0.0, 0.01)``: 0.01 is the scale,
    i.e. the std). Label 1 if the bits are equal (XNOR), else 0, at ``t = T - 1`` only; ``window = 1``.
    """
    _require_int(batch_size=batch_size, cue_ms=cue_ms)
    require_nonnegative(delay_ms=delay_ms)
    if not isinstance(cues, XORCues):
        raise ValueError(f"cues must be an XORCues, got {type(cues).__name__}")
    if not isinstance(delay_ms, numbers.Integral):
        raise ValueError(f"delay_ms must be an integer number of 1 ms steps, got {delay_ms!r}")
    T = 2 * cue_ms + int(delay_ms)
    bits = torch.randint(0, 2, (2, batch_size), generator=generator)
    s = torch.linspace(-cue_ms / 2, cue_ms / 2, cue_ms, dtype=torch.float64)
    bump = (cues.amplitude * torch.exp(-s ** 2 / (2 * cues.width_ms ** 2))).float()[:, None]
    x = torch.full((T, batch_size, 2), float(cues.baseline))
    x[:cue_ms, :, 0] += bump * bits[0]
    x[T - cue_ms:, :, 1] += bump * bits[1]
    x += cues.noise_std * torch.randn(T, batch_size, 2, generator=generator)
    y = torch.full((T, batch_size), -1, dtype=torch.int64)
    y[-1] = (bits[0] == bits[1]).long()
    return Batch(x, y, y >= 0, window=1)


# ------------------------------------------------------------------------------------------------ sequential MNIST

def threshold_crossing(images, *, n_thresholds=40, cue_ms=56):
    r"""LSNN threshold-crossing spike code of pixel sequences: ``images (B, L)`` in [0, 1] -> ``(L + cue_ms, B, C)``.

    Pixel ``p_k`` is shown at step ``k``. With thresholds ``linspace(0, 1, n_thresholds)``, each
    :math:`\theta < 1` gives channel ``2i`` (onset: a spike at step ``k`` when :math:`p_k < \theta \le p_{k+1}`,
    i.e. one step *before* the first pixel at or above threshold, as in LSNN-official ``find_onset_offset``)
    and channel ``2i + 1`` (offset: a spike at ``k`` when :math:`p_k \ge \theta > p_{k+1}`). The threshold 1
    gives channel ``C - 2`` (touch: a spike wherever :math:`p_k = 1`). The channels of :math:`\theta = 0` never
    fire. Then ``cue_ms`` steps of no input follow, with the cue channel ``C - 1`` firing at every one of them.
    ``C = 2 * n_thresholds`` (80 for the tutorial).
    """
    require_shape("images", images, (None, None))
    _require_int(n_thresholds=n_thresholds, cue_ms=cue_ms)
    if n_thresholds < 2:
        raise ValueError(f"n_thresholds must be at least 2 (0 and 1), got {n_thresholds!r}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    if images.numel() and not (images.min() >= 0 and images.max() <= 1):
        raise ValueError(f"images must lie in [0, 1], got values in [{images.min():g}, {images.max():g}]")
    B, L = images.shape
    pixels = images.detach().T  # (L, B)
    theta = torch.linspace(0, 1, n_thresholds, dtype=torch.float64)[:-1].to(pixels)
    above = pixels[..., None] >= theta  # (L, B, n_thresholds - 1)
    onset, offset = ~above[:-1] & above[1:], above[:-1] & ~above[1:]
    n_cross = 2 * (n_thresholds - 1)
    x = torch.zeros(L + cue_ms, B, n_cross + 2, device=images.device)
    x[:L - 1, :, :n_cross] = torch.stack([onset, offset], dim=-1).flatten(-2).float()
    x[:L, :, n_cross] = (pixels == 1).float()
    x[L:, :, n_cross + 1] = 1.0
    return x


def _check_labels(images, labels):
    require_shape("labels", labels, (images.shape[0],))
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")


def _label_last(x, labels, window):
    """:class:`Batch` of input ``x`` with the label in its last window of ``window`` steps, -1 elsewhere."""
    y = torch.full((x.shape[0] // window, labels.shape[0]), -1, dtype=torch.int64, device=x.device)
    y[-1] = labels.long()
    mask = torch.zeros_like(y, dtype=torch.bool)
    mask[-1] = True
    return Batch(x, y, mask, window)


def smnist_encode(images, labels, *, n_thresholds=40, cue_ms=56):
    """:class:`Batch` of images ``(B, L)`` and labels ``(B,)``: threshold-crossing input, ``window = 28``
    (one image row), label in the last window (the mean readout over the cue period), -1 elsewhere."""
    _check_labels(images, labels)
    x = threshold_crossing(images, n_thresholds=n_thresholds, cue_ms=cue_ms)
    if x.shape[0] % 28:
        raise ValueError(f"cue_ms must make L + cue_ms a multiple of 28, got L={images.shape[1]}, cue_ms={cue_ms}")
    return _label_last(x, labels, 28)


def row_mnist_encode(images, labels):
    """:class:`Batch` of row-wise MNIST (BiolHessRNN): images ``(B, 784)`` in [0, 1] shown as 28 steps of one
    28-pixel row each, ``x (28, B, 28)``, the label at the last step (``window = 1``)."""
    require_shape("images", images, (None, 784))
    _check_labels(images, labels)
    return _label_last(images.reshape(-1, 28, 28).transpose(0, 1).float(), labels, 1)


def smnist_batch(images, labels, batch_size, *, generator, n_thresholds=40, cue_ms=56):
    """A random batch of ``batch_size`` distinct images of the split (a fresh draw per call, not epochs)."""
    return SMNIST(images, labels, batch_size=batch_size, n_thresholds=n_thresholds, cue_ms=cue_ms)(generator=generator)


def smnist_batches(images, labels, batch_size, *, n_thresholds=40, cue_ms=56):
    """The whole split in order, ``batch_size`` images per :class:`Batch` (the last one may be smaller)."""
    return SMNIST(images, labels, batch_size=batch_size, n_thresholds=n_thresholds, cue_ms=cue_ms).batches()


class SMNIST:
    """Sequential MNIST of one split as a task: ``SMNIST(images, labels, batch_size=256)(generator=g) -> Batch``.

    Use it as ``TaskStream(SMNIST(train_images, train_labels, batch_size=256), seed=0)``; ``batches()``
    iterates the whole split in order (test evaluation). Images ``(N, 784)`` in [0, 1], labels ``(N,)``.
    """

    def __init__(self, images, labels, *, batch_size, n_thresholds=40, cue_ms=56):
        _require_int(batch_size=batch_size)
        require_shape("images", images, (None, None))
        if batch_size > images.shape[0]:
            raise ValueError(f"batch_size must be at most the {images.shape[0]} images, got {batch_size}")
        self.images, self.labels, self.batch_size = images, labels, int(batch_size)
        self.options = dict(n_thresholds=n_thresholds, cue_ms=cue_ms)
        self.encode(images[:1], labels[:1])  # checks the settings

    def encode(self, images, labels):
        return smnist_encode(images, labels, **self.options)

    def __len__(self):
        return self.images.shape[0]

    def __call__(self, *, generator):
        index = torch.randperm(len(self), generator=generator)[:self.batch_size].to(self.images.device)
        return self.encode(self.images[index], self.labels[index])

    def batches(self):
        """The whole split in order, ``batch_size`` images per batch (the last one may be smaller)."""
        for start in range(0, len(self), self.batch_size):
            yield self.encode(self.images[start:start + self.batch_size], self.labels[start:start + self.batch_size])


class RowMNIST(SMNIST):
    """Row-wise MNIST of one split as a task (:func:`row_mnist_encode`), used like :class:`SMNIST`."""

    def __init__(self, images, labels, *, batch_size):
        super().__init__(images, labels, batch_size=batch_size)

    def encode(self, images, labels):
        return row_mnist_encode(images, labels)


# ------------------------------------------------------------------------------------------------------- registry

# -------------------------------------------------------------- gradient flossing: copy and delayed parity of bits

def _lagged_bits(batch_size, n_steps, delay, order, n_in, sigma, first_step, generator):
    """Bits ``b_t`` for ``t = -delay .. n_steps - 1`` (the first ``delay`` drawn, then dropped, as the original);
    the parity of the ``2**order`` bits at lags ``delay, 2 delay, ..., 2**order delay`` of every channel."""
    _require_int(batch_size=batch_size, n_steps=n_steps, n_in=n_in)
    require_integer(delay=delay)
    require_nonnegative(delay=delay)
    require_positive(sigma=sigma)
    if first_step not in ("original", "causal"):
        raise ValueError(f"first_step must be 'original' or 'causal', got {first_step!r}")
    if order and not delay:
        raise ValueError(f"delay must be at least 1 for a parity (order={order}): at delay 0 every lag is the current "
                         f"bit and the target is always 0")
    lags = 2 ** order
    start = max(delay * lags - (first_step == "original"), 0)
    if start >= n_steps:
        raise ValueError(f"the loss window would be empty: it starts at step {start} (delay={delay}, order={order}) "
                         f"but n_steps={n_steps}")
    bits = torch.randint(0, 2, (n_steps + delay, batch_size, n_in), generator=generator)
    y = torch.zeros(n_steps, batch_size, n_in)  # bits[t + delay - j delay] is b_{t - j delay}; >= 0 from start on
    y[start:] = sum(bits[start + delay - j * delay:n_steps + delay - j * delay] for j in range(1, lags + 1)) % 2
    mask = torch.zeros(n_steps, batch_size, dtype=torch.bool)
    mask[start:] = True
    return Batch(sigma * bits[delay:].float(), y, mask, window=1, loss="bce")


def delayed_parity(batch_size, *, generator, n_steps=300, delay=5, order=1, n_in=1, sigma=1.0, first_step="original"):
    r"""Gradient flossing's delayed XOR (``order=1``) and higher-order parity (Engelken 2023).

    Input ``x_t = sigma * b_t``, i.i.d. Bernoulli(1/2) bits on ``n_in`` channels; target of each channel
    :math:`y_t = b_{t-d} \oplus b_{t-2d} \oplus \dots \oplus b_{t-2^h d}` (``h = order``, ``d = delay``); loss
    BCE with logits (``loss="bce"``) on steps ``t >= 2^h d - 1`` (0-indexed): the original's window, whose first
    step depends on one bit drawn before the sequence starts and is at chance. ``first_step="causal"`` starts at
    ``2^h d`` instead, where every target is a function of inputs the network has seen.
    """
    require_integer(order=order)
    if order < 1:
        raise ValueError(f"order must be a parity order >= 1 (order 0 is copy_task), got {order!r}")
    return _lagged_bits(batch_size, n_steps, delay, order, n_in, sigma, first_step, generator)


def copy_task(batch_size, *, generator, n_steps=300, delay=5, n_in=1, sigma=1.0, first_step="original"):
    r"""Gradient flossing's delayed copy: :math:`y_t = b_{t-d}` for every channel, scored (BCE with logits) on
    steps ``t >= d - 1``, the original's window (its first step copies a bit drawn before the sequence, at
    chance); ``first_step="causal"`` starts at ``d``. Input as in :func:`delayed_parity`."""
    return _lagged_bits(batch_size, n_steps, delay, 0, n_in, sigma, first_step, generator)


TASKS = {"store_recall": store_recall, "delayed_xor": delayed_xor, "delayed_parity": delayed_parity,
         "copy": copy_task}


def get_task(name):
    """The task function registered as ``name`` in :data:`TASKS`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]
