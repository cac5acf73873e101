"""Losses and metrics against hand computation: window averages, masks, and the Objective's sum of terms."""
import math
from types import SimpleNamespace

import pytest
import torch

from rnnnotes.losses import (LOSSES, Objective, accuracy, firing_rate_hz, isi_cv, l2_penalty, masked_mse,
                             rate_regularizer, task_loss, window_logits, windowed_cross_entropy)
from rnnnotes.tasks import Batch

# out (T=4, B=2, C=2), window 2: window 0 averages steps 0-1, window 1 steps 2-3
OUT = torch.tensor([[[1.0, 0.0], [0.0, 2.0]],
                    [[3.0, 0.0], [0.0, 0.0]],
                    [[0.0, 1.0], [2.0, 0.0]],
                    [[0.0, 3.0], [0.0, 4.0]]], dtype=torch.float64)
MEANS = [[[2.0, 0.0], [0.0, 1.0]],  # window 0: batch 0, batch 1
         [[0.0, 2.0], [1.0, 2.0]]]  # window 1


def class_batch(y=((1, 1), (0, 1)), mask=((True, False), (True, True))):
    """Labels at window (0, 1) are masked out (a real label there must still be ignored)."""
    return Batch(torch.zeros(4, 2, 3), torch.tensor(y), torch.tensor(mask), window=2)


def mse_batch(y, mask=((True, False), (False, True))):
    return Batch(torch.zeros(4, 2, 3), torch.tensor(y, dtype=torch.float64), torch.tensor(mask), window=2,
                 loss="mse")


def nll(logits, label):
    return -(logits[label] - math.log(sum(math.exp(v) for v in logits)))


def test_window_logits_averages_windows_and_drops_the_tail():
    assert window_logits(OUT, 2).tolist() == MEANS
    tail = torch.cat([OUT, torch.full((1, 2, 2), 100.0, dtype=torch.float64)])
    assert window_logits(tail, 2).tolist() == MEANS


def test_windowed_cross_entropy_by_hand():
    expected = (nll(MEANS[0][0], 1) + nll(MEANS[1][0], 0) + nll(MEANS[1][1], 1)) / 3
    assert windowed_cross_entropy(OUT, class_batch()).item() == pytest.approx(expected, rel=1e-12)
    assert task_loss(OUT, class_batch()).item() == pytest.approx(expected, rel=1e-12)


def test_masked_windows_contribute_nothing_to_cross_entropy():
    out = OUT.clone().requires_grad_()
    loss = windowed_cross_entropy(out, class_batch())
    loss.backward()
    assert (out.grad[0:2, 1] == 0).all() and (out.grad[0:2, 0] != 0).any()
    changed = OUT.clone()
    changed[0:2, 1] = torch.tensor([[50.0, -50.0], [-7.0, 9.0]])
    assert windowed_cross_entropy(changed, class_batch()).item() == loss.item()
    assert windowed_cross_entropy(OUT, class_batch(y=((1, -1), (0, 1)))).item() == loss.item()


def test_masked_mse_by_hand():
    y = [[[1.0, -1.0], [9.0, 9.0]],
         [[5.0, 5.0], [0.5, 4.0]]]
    # masked windows (0, 0) and (1, 1): (2 - 1)^2 + (0 + 1)^2 + (1 - 0.5)^2 + (2 - 4)^2 over 2 windows * 2 outputs
    expected = (1.0 + 1.0 + 0.25 + 4.0) / 4
    assert masked_mse(OUT, mse_batch(y)).item() == pytest.approx(expected, rel=1e-12)
    assert task_loss(OUT, mse_batch(y)).item() == pytest.approx(expected, rel=1e-12)
    assert set(LOSSES) == {"cross_entropy", "mse", "bce"}


def test_masked_windows_contribute_nothing_to_mse():
    y = [[[1.0, -1.0], [math.nan, math.nan]],
         [[5.0, 5.0], [0.5, 4.0]]]
    out = OUT.clone().requires_grad_()
    loss = masked_mse(out, mse_batch(y))
    loss.backward()
    assert loss.item() == pytest.approx(6.25 / 4, rel=1e-12), "a NaN target outside the mask is never read"
    assert torch.isfinite(out.grad).all() and (out.grad[0:2, 1] == 0).all() and (out.grad[2:4, 0] == 0).all()
    changed = OUT.clone()
    changed[2:4, 0] = 123.0
    assert masked_mse(changed, mse_batch(y)).item() == loss.item()


def test_masked_mse_names_a_readout_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"out must have the n_out = 3 outputs of y, got 2"):
        masked_mse(OUT, mse_batch([[[0.0] * 3] * 2] * 2))


def test_accuracy_by_hand_and_only_for_class_labels():
    # arg-max per window: (0, 0) -> 0, (0, 1) -> 1, (1, 0) -> 1, (1, 1) -> 1
    batch = class_batch(y=((0, 0), (0, 1)))  # right, masked (wrong there), wrong, right
    assert accuracy(OUT, batch).item() == pytest.approx(2 / 3)
    assert accuracy(OUT, class_batch(y=((0, 1), (1, 1)), mask=((True, True), (False, False)))).item() == 1.0
    with pytest.raises(ValueError, match="accuracy needs class labels .*loss='mse'"):
        accuracy(OUT, mse_batch([[[0.0, 0.0]] * 2] * 2))


def test_rate_regularizer_and_l2_penalty_by_hand():
    z = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])  # (T=2, B=1, n=2): 0.5 spikes / ms and none
    assert firing_rate_hz(z).tolist() == [500.0, 0.0]
    assert rate_regularizer(z, target_hz=10.0).item() == pytest.approx(0.49 ** 2 + 0.01 ** 2)
    assert l2_penalty([torch.tensor([1.0, -2.0]), torch.tensor([[3.0]])]).item() == 7.0


def test_isi_cv_pools_the_intervals_of_every_neuron_by_hand():
    z = torch.zeros(8, 3)
    z[[0, 2, 6], 0] = 1.0  # intervals 2, 4
    z[[1, 4], 1] = 1.0  # interval 3; neuron 2 silent
    assert isi_cv(z) == pytest.approx(math.sqrt(2 / 3) / 3)  # intervals 2, 3, 4: std sqrt(2/3), mean 3
    assert math.isnan(isi_cv(z[:, 1:])), "one interval has no spread"


@pytest.mark.parametrize("kwargs, name", [(dict(rate_weight=-0.1), "rate_weight"), (dict(target_hz=-10.0), "target_hz"),
                                          (dict(rate_weight=math.nan), "rate_weight"),
                                          (dict(l2_weight=-1e-4), "l2_weight")])
def test_objective_refuses_a_penalty_that_would_reward(kwargs, name):
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        Objective(**kwargs)
    with pytest.raises(ValueError, match="target_hz must be a finite number >= 0"):
        rate_regularizer(torch.zeros(2, 1, 3), target_hz=-5.0)


class Model:
    def __init__(self, w, spiking=False):
        self.spiking, self.w = spiking, w
        self.cell = SimpleNamespace(w_in=torch.tensor([2.0]), w_rec=torch.tensor([[1.0, 1.0]]))
        self.readout = SimpleNamespace(w_out=w)

    def __call__(self, x, rule=None):
        """``out = x @ w``, hidden ``z = x``; a ``threshold`` marks a spiking cell."""
        hidden = SimpleNamespace(z=x, threshold=x) if self.spiking else SimpleNamespace(z=x)
        return SimpleNamespace(out=x @ self.w, hidden=hidden)


def test_objective_with_real_valued_targets_reports_no_accuracy():
    x = torch.zeros(2, 1, 1)
    x[0] = 1.0  # z: 0.5 spikes / ms in window 0 of a window-2 batch
    batch = Batch(x, torch.tensor([[[1.0, 3.0]]]), torch.tensor([[True]]), window=2, loss="mse")
    model = Model(torch.tensor([[4.0, 2.0]]))  # window average of out: (2, 1)
    loss, metrics = Objective(rate_weight=0.5, target_hz=10.0, l2_weight=0.1)(model, batch)
    task = ((2.0 - 1.0) ** 2 + (1.0 - 3.0) ** 2) / 2
    l2 = 0.5 * (4 + 1 + 1 + 16 + 4)
    assert set(metrics) == {"loss", "task_loss"}
    assert metrics["task_loss"] == pytest.approx(task)
    assert loss.item() == pytest.approx(task + 0.5 * 0.49 ** 2 + 0.1 * l2)
    assert "rate_hz" in Objective()(Model(torch.tensor([[4.0, 2.0]]), spiking=True), batch)[1]


def test_objective_with_class_labels_reports_accuracy():
    x = torch.zeros(2, 1, 1)
    x[0] = 1.0
    batch = Batch(x, torch.tensor([[0]]), torch.tensor([[True]]), window=2)
    loss, metrics = Objective()(Model(torch.tensor([[4.0, 2.0]])), batch)
    assert set(metrics) == {"loss", "task_loss", "accuracy"} and metrics["accuracy"] == 1.0
    assert metrics["task_loss"] == pytest.approx(nll([2.0, 1.0], 0))
