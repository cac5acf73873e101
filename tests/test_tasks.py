"""Tasks against their definitions: decoded from the input they produce, not from their internals."""
import dataclasses
import math

import pytest
import torch

from rnnnotes import seeding
from rnnnotes.tasks import (SMNIST, TASKS, Batch, RowMNIST, TaskStream, XORCues, delayed_xor, get_task,
                            row_mnist_encode, smnist_batch, smnist_batches, smnist_encode, store_recall,
                            store_recall_trials, threshold_crossing)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def equal_batches(a, b):
    return (torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.mask, b.mask)
            and (a.window, a.loss) == (b.window, b.loss))


# ------------------------------------------------------------------------------------------------ threshold crossing

def reference_crossing(image, n_thresholds):
    """Channel spike lists written out from the definition, one threshold and one step at a time."""
    p = [float(v) for v in image]
    thetas = [i / (n_thresholds - 1) for i in range(n_thresholds)]
    channels = []
    for theta in thetas[:-1]:
        channels.append([k for k in range(len(p) - 1) if p[k] < theta <= p[k + 1]])  # onset
        channels.append([k for k in range(len(p) - 1) if p[k] >= theta > p[k + 1]])  # offset
    channels.append([k for k in range(len(p)) if p[k] == 1.0])  # touch
    return channels


def test_threshold_crossing_shape_and_cue_channel():
    images = torch.rand(3, 784, generator=gen())
    x = threshold_crossing(images)
    assert x.shape == (840, 3, 80) and x.dtype == torch.float32
    assert (x[784:, :, 79] == 1).all() and (x[:784, :, 79] == 0).all(), "cue fires exactly in the last 56 steps"
    assert (x[784:, :, :79] == 0).all(), "no other input during the cue"
    assert (x[:, :, :2] == 0).all(), "theta = 0 channels never fire"


def test_threshold_crossing_ramp_gives_predicted_onsets():
    # pixel 10 + j = (j + 0.5) / 39 for j = 0..38, then 1 for steps 49..53, then 0 again
    image = torch.zeros(784)
    image[10:49] = (torch.arange(39) + 0.5) / 39
    image[49:54] = 1.0
    x = threshold_crossing(image[None])[:, 0]
    for i in range(1, 39):  # theta_i = i / 39 lies between pixels 9 + i and 10 + i: onset spike at step 9 + i
        assert x[:, 2 * i].nonzero().flatten().tolist() == [9 + i], f"onset of theta_{i}"
        assert x[:, 2 * i + 1].nonzero().flatten().tolist() == [53], f"offset of theta_{i}"
    assert x[:, 78].nonzero().flatten().tolist() == [49, 50, 51, 52, 53], "touch where the pixel equals 1"
    assert (x[:, :2] == 0).all()


def test_threshold_crossing_matches_reference_loops():
    images = torch.rand(4, 50, generator=gen(1))
    images[images < 0.3] = 0.0
    images[images > 0.8] = 1.0
    x = threshold_crossing(images, n_thresholds=6, cue_ms=5)
    assert x.shape == (55, 4, 12)
    for b in range(4):
        for c, steps in enumerate(reference_crossing(images[b], 6)):
            assert x[:, b, c].nonzero().flatten().tolist() == steps, (b, c)


def test_threshold_crossing_rejects_unscaled_images():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold_crossing(torch.full((1, 784), 255.0))
    with pytest.raises(ValueError, match="floating"):
        threshold_crossing(torch.zeros(1, 784, dtype=torch.uint8))


def test_smnist_batch_layout_and_stream():
    images, labels = torch.rand(20, 784, generator=gen()), torch.arange(20) % 10
    batch = smnist_batch(images, labels, 6, generator=gen(3))
    assert batch.x.shape == (840, 6, 80) and batch.window == 28 and batch.y.shape == (30, 6)
    assert (batch.y[:-1] == -1).all() and batch.mask[-1].all() and not batch.mask[:-1].any()
    # the label of each drawn example is that of the image it encodes
    every = threshold_crossing(images)
    for b in range(6):
        i = next(i for i in range(20) if torch.equal(every[:, i], batch.x[:, b]))
        assert batch.y[-1, b] == labels[i]
    task = SMNIST(images, labels, batch_size=6)
    stream = TaskStream(task, seed=1)
    assert equal_batches(stream(4), TaskStream(task, seed=1)(4)) and not equal_batches(stream(4), stream(5))
    ordered = list(task.batches())
    assert [b.x.shape[1] for b in ordered] == [6, 6, 6, 2]
    assert torch.equal(torch.cat([b.y[-1] for b in ordered]), labels)
    assert equal_batches(ordered[1], smnist_encode(images[6:12], labels[6:12]))
    assert len(list(smnist_batches(images, labels, 20))) == 1


def test_smnist_rejects_bad_settings():
    images, labels = torch.rand(5, 784), torch.zeros(5, dtype=torch.int64)
    with pytest.raises(ValueError, match="cue_ms"):
        SMNIST(images, labels, batch_size=2, cue_ms=50)  # 834 steps is not a whole number of rows
    with pytest.raises(ValueError, match="batch_size"):
        SMNIST(images, labels, batch_size=6)
    with pytest.raises(ValueError, match="labels"):
        smnist_encode(images, labels[:3])


# ---------------------------------------------------------------------------------------------------- store-recall

def decode_groups(batch, n_symbols):
    """Per symbol step, which of the 4 groups (value 0, value 1, store, recall) fired: (n_symbols, B, 4) bool."""
    T, B, C = batch.x.shape
    counts = batch.x.reshape(n_symbols, T // n_symbols, B, 4, C // 4).sum(dim=(1, 4))
    return counts > 0


def test_store_recall_targets_follow_the_last_store():
    n_symbols = 12
    batch = store_recall(500, generator=gen(), symbol_ms=2, n_channels=8, rate_hz=1000.0)  # p = 1: no misses
    assert batch.x.shape == (24, 500, 8) and batch.y.shape == (12, 500) and batch.window == 2
    groups = decode_groups(batch, n_symbols)
    value0, value1, store, recall = groups.unbind(-1)
    assert ((value0 ^ value1) == ~recall).all(), "one value group per step, none at recall"
    assert (store & recall).sum() == 0
    for b in range(500):
        steps = [("S" if store[t, b] else "R") for t in range(n_symbols) if store[t, b] or recall[t, b]]
        assert steps and "".join(steps) == "SR" * (len(steps) // 2), "store first, then alternating, recall last"
        stored = None
        for t in range(n_symbols):
            if store[t, b]:
                stored = int(value1[t, b])
                assert not recall[t + 1, b] and not store[t + 1, b], "a value step follows every store"
            if recall[t, b]:
                assert batch.y[t, b] == stored
            else:
                assert batch.y[t, b] == -1
    assert (batch.mask == recall).all()


def test_store_recall_distractor_and_symbols():
    trials = store_recall_trials(4000, generator=gen(1), symbol_ms=1, n_channels=4, rate_hz=1000.0)
    symbols, shown = trials.symbols, trials.shown
    store = symbols[:-1] == 2
    flipped = (shown[1:][store] != shown[:-1][store]).float()
    n = flipped.numel()
    assert abs(flipped.mean().item() - 0.5) < 3 * math.sqrt(0.25 / n), "the bit after a store flips half the time"
    assert ((symbols == 3) == (shown == -1)).all()
    groups = decode_groups(trials.batch, 12)
    assert (groups[..., 1] == (shown == 1)).all() and (groups[..., 2] == (symbols == 2)).all()


def test_store_recall_rates_are_50hz_in_active_groups():
    batch = store_recall(16, generator=gen(2))
    assert batch.x.shape == (2400, 16, 100) and batch.window == 200
    active = decode_groups(batch, 12).repeat_interleave(25, dim=-1).repeat_interleave(200, dim=0)
    # decoding an active group from a 200 ms x 25 channel window has a miss probability of 0.95**5000
    spikes_active = batch.x[active]
    p, n = spikes_active.mean().item(), spikes_active.numel()
    assert abs(p - 0.05) < 4 * math.sqrt(0.05 * 0.95 / n), f"rate {p * 1000:.1f} Hz"
    assert batch.x[~active].sum() == 0
    per_group = batch.x.reshape(2400, 16, 4, 25).sum(-1)
    assert (per_group > 0).sum(-1).max() <= 2, "at most two groups (store + value) fire at once"


# ---------------------------------------------------------------------------------------------------- delayed XOR

def test_delayed_xor_layout_and_balance():
    batch = delayed_xor(4000, generator=gen())
    assert batch.x.shape == (900, 4000, 2) and batch.y.shape == (900, 4000) and batch.window == 1
    assert (batch.y[:-1] == -1).all() and (batch.y[-1] >= 0).all()
    assert batch.mask[-1].all() and not batch.mask[:-1].any() and batch.loss == "cross_entropy"
    ones = int(batch.y[-1].sum())
    assert abs(ones - 2000) < 3 * math.sqrt(4000 * 0.25), "labels balanced within 3 sigma"
    bits = torch.stack([batch.x[:100, :, 0].mean(0), batch.x[800:, :, 1].mean(0)]) > 0.5
    assert torch.equal(batch.y[-1], (bits[0] == bits[1]).long()), "label = XNOR of the cue bits"
    for i in range(2):
        assert abs(bits[i].float().mean().item() - 0.5) < 3 * math.sqrt(0.25 / 4000)
    delay = batch.x[100:800]
    assert abs(delay.mean().item() - 0.02) < 1e-3 and abs(delay.std().item() - 0.01) < 2e-4, "noise std 0.01"


def test_delayed_xor_bump_shape_without_noise():
    batch = delayed_xor(64, generator=gen(5), delay_ms=30, cue_ms=20, cues=XORCues(width_ms=5.0, noise_std=0.0))
    x, T = batch.x, 70
    assert x.shape == (T, 64, 2)
    bump = [0.02 + 2.0 * math.exp(-(-10 + 20 * k / 19) ** 2 / (2 * 5.0 ** 2)) for k in range(20)]
    for b in range(64):
        for channel, window in ((0, slice(0, 20)), (1, slice(50, 70))):
            cue = x[window, b, channel]
            on = cue.max() > 0.5
            assert torch.allclose(cue, torch.tensor(bump) if on else torch.full((20,), 0.02), atol=1e-6)
        assert (x[20:, b, 0] == 0.02).all() and (x[:50, b, 1] == 0.02).all()


# --------------------------------------------------------------------------------------------- streams and registry

def test_task_stream_is_a_pure_function_of_seed_and_step():
    kwargs = dict(batch_size=4, delay_ms=10, cue_ms=5)
    a, b = TaskStream(delayed_xor, seed=7, **kwargs), TaskStream("delayed_xor", seed=7, **kwargs)
    later = [a(step) for step in range(6)][-1]
    assert equal_batches(later, b(5)), "batch 5 does not depend on batches 0..4"
    assert not equal_batches(a(0), a(1))
    assert not equal_batches(a(0), TaskStream(delayed_xor, seed=8, **kwargs)(0))
    sr = TaskStream(store_recall, seed=0, batch_size=3, symbol_ms=5)
    assert equal_batches(sr(2), sr(2)) and not equal_batches(sr(2), sr(3))


def test_named_streams_come_from_the_data_stream_of_the_seed():
    kwargs = dict(batch_size=4, delay_ms=10, cue_ms=5)
    train = TaskStream(delayed_xor, seed=7, **kwargs)
    test = TaskStream(delayed_xor, seed=7, stream="test", **kwargs)
    assert train.stream == "train" and test.stream == "test"
    assert equal_batches(test(3), delayed_xor(generator=seeding.generator(7, "data", "test", 3), **kwargs))
    assert equal_batches(train(3), delayed_xor(generator=seeding.generator(7, "data", "train", 3), **kwargs))
    assert not equal_batches(train(3), test(3))
    assert not equal_batches(TaskStream(delayed_xor, seed=1007, **kwargs)(0), test(0))
    big = TaskStream(delayed_xor, seed=2 ** 31 + 1, stream="validation", **kwargs)  # no limit below 2**31
    assert equal_batches(big(2 ** 40), big(2 ** 40)) and not equal_batches(big(0), big(1))
    assert repr(train) == ("TaskStream('delayed_xor', seed=7, stream='train', batch_size=4, delay_ms=10, "
                           "cue_ms=5)")
    drawn = TaskStream(delayed_xor, seed=None, **kwargs)
    assert 0 <= drawn.seed < 2 ** 31 and f"seed={drawn.seed}," in repr(drawn)


@pytest.mark.parametrize("seed, stream, step, name", [
    (-1, "train", 0, "seed"), (1.5, "train", 0, "seed"), (True, "train", 0, "seed"),
    (0, "", 0, "stream"), (0, 3, 0, "stream"), (0, "train", -1, "step"), (0, "train", 1.0, "step"),
])
def test_bad_stream_arguments_name_the_argument(seed, stream, step, name):
    with pytest.raises(ValueError, match=f"^{name} must"):
        TaskStream(delayed_xor, seed=seed, stream=stream, batch_size=2)(step)


def test_registry_and_argument_names_fail_fast():
    assert get_task("store_recall") is store_recall
    assert set(TASKS) == {"store_recall", "delayed_xor", "delayed_parity", "copy"}
    with pytest.raises(ValueError, match="unknown task 'xor'; valid tasks: copy, delayed_parity, delayed_xor, "
                                         "store_recall"):
        get_task("xor")
    with pytest.raises(ValueError, match="unknown task"):
        TaskStream("xor", seed=0, batch_size=2)
    with pytest.raises(ValueError, match="batchsize"):
        TaskStream(delayed_xor, seed=0, batchsize=2)


def test_batch_unpacks_as_x_y_mask_and_moves_as_a_copy():
    x, y, mask = torch.zeros(4, 2, 1), torch.tensor([[-1, 0], [1, -1]]), torch.tensor([[False, True], [True, False]])
    batch = Batch(x, y, mask, window=2)
    first, second, third = batch
    assert first is x and second is y and third is mask and len(list(batch)) == 3
    assert (batch.window, batch.loss) == (2, "cross_entropy") and Batch(x[:2], y, mask).window == 1
    moved = batch.to("cpu")
    assert moved is not batch and equal_batches(moved, batch)
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.window = 3
    regression = Batch(x, torch.zeros(2, 2, 5, dtype=torch.float64), mask, window=2, loss="mse")
    assert regression.y.shape == (2, 2, 5)


def _batch(**fields):
    """A valid window-2 classification batch with ``fields`` replaced."""
    valid = dict(x=torch.zeros(4, 2, 1), y=torch.tensor([[-1, 0], [1, -1]]),
                 mask=torch.tensor([[False, True], [True, False]]), window=2, loss="cross_entropy")
    return Batch(**{**valid, **fields})


@pytest.mark.parametrize("fields, message", [
    (dict(x=torch.zeros(4, 2, 1, dtype=torch.int64)), "x must be floating point"),
    (dict(x=torch.zeros(4, 2)), r"x must have shape \(\*, \*, \*\)"),
    (dict(x=[[[0.0]]]), "x must be a tensor"),
    (dict(x=torch.zeros(3, 2, 1)), "x must cover the 2 windows of y.*T=3"),
    (dict(x=torch.zeros(6, 2, 1)), "x must cover the 2 windows of y.*T=6"),
    (dict(y=torch.tensor([[0.0, 1.0], [1.0, 0.0]])), "y must hold int64 class labels for loss='cross_entropy'"),
    (dict(y=torch.tensor([[0, 1], [1, 0]]), loss="mse"), "y must hold floating targets for loss='mse'"),
    (dict(y=torch.zeros(2, 2, 1, dtype=torch.int64)), r"y must have shape \(\*, 2\)"),
    (dict(y=torch.zeros(2, 3, dtype=torch.int64)), r"y must have shape \(\*, 2\)"),
    (dict(y=torch.zeros(2, 2), loss="mse"), r"y must have shape \(\*, 2, \*\)"),
    (dict(y=torch.tensor([[-1, 0], [-1, -1]])), "y must be a class label >= 0 wherever mask is True"),
    (dict(mask=torch.tensor([[0, 1], [1, 0]])), "mask must be bool"),
    (dict(mask=torch.ones(2, 3, dtype=torch.bool)), r"mask must have shape \(2, 2\)"),
    (dict(window=0), "window must be a positive"),
    (dict(window=1.5), "window must be an integer"),
    (dict(loss="xent"), "loss must be one of 'cross_entropy', 'mse', 'bce', got 'xent'"),
])
def test_bad_batch_raises_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        _batch(**fields)


@pytest.mark.parametrize("make, kwargs, name", [
    (store_recall, dict(batch_size=0), "batch_size"),
    (store_recall, dict(batch_size=2.5), "batch_size"),
    (store_recall, dict(batch_size=2, n_symbols=0), "n_symbols"),
    (store_recall, dict(batch_size=2, n_symbols=2), "n_symbols"),
    (store_recall, dict(batch_size=2, symbol_ms=-1), "symbol_ms"),
    (store_recall, dict(batch_size=2, n_channels=0), "n_channels"),
    (store_recall, dict(batch_size=2, n_channels=10), "n_channels"),
    (store_recall, dict(batch_size=2, rate_hz=0.0), "rate_hz"),
    (store_recall, dict(batch_size=2, rate_hz=2000.0), "rate_hz"),
    (store_recall, dict(batch_size=2, p_store=0.0), "p_store"),
    (store_recall, dict(batch_size=2, p_store=1.0), "p_store"),
    (delayed_xor, dict(batch_size=0), "batch_size"),
    (delayed_xor, dict(batch_size=2, cue_ms=0), "cue_ms"),
    (delayed_xor, dict(batch_size=2, delay_ms=-5), "delay_ms"),
    (delayed_xor, dict(batch_size=2, cues=(1.0,)), "cues"),
    (smnist_batch, dict(images=torch.rand(4, 784), labels=torch.zeros(4, dtype=torch.int64), batch_size=0),
     "batch_size"),
])
def test_bad_parameters_raise_with_their_name(make, kwargs, name):
    with pytest.raises(ValueError, match=name):
        make(generator=gen(), **kwargs)


@pytest.mark.parametrize("kwargs, name", [(dict(n_thresholds=1), "n_thresholds"), (dict(cue_ms=0), "cue_ms")])
def test_threshold_crossing_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        threshold_crossing(torch.rand(1, 784), **kwargs)


@pytest.mark.parametrize("kwargs, name", [(dict(amplitude=0.0), "amplitude"), (dict(width_ms=-1.0), "width_ms"),
                                          (dict(noise_std=-0.1), "noise_std"), (dict(baseline=-1.0), "baseline")])
def test_bad_xor_cues_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        XORCues(**kwargs)


def test_row_mnist_shows_one_row_per_step_and_labels_the_last():
    images = torch.rand(3, 784)
    labels = torch.tensor([4, 0, 9])
    x, y, mask = row_mnist_encode(images, labels)
    assert x.shape == (28, 3, 28) and y.shape == (28, 3)
    assert torch.equal(x[5, 1], images[1, 5 * 28:6 * 28])
    assert y[-1].tolist() == [4, 0, 9] and mask[-1].all() and not mask[:-1].any()
    task = RowMNIST(images, labels, batch_size=2)
    assert [b.x.shape[1] for b in task.batches()] == [2, 1]
    assert task(generator=gen(0)).x.shape == (28, 2, 28)
    with pytest.raises(ValueError, match="images"):
        row_mnist_encode(torch.rand(3, 100), labels)
