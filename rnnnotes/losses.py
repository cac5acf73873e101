"""Losses and metrics on window-averaged readouts (see ``tasks.Batch``), and the firing-rate regulariser."""
from dataclasses import dataclass

import torch
from torch.nn import functional as F


def window_logits(out, window):
    """Average ``out (T, B, C)`` over consecutive windows of ``window`` steps: ``(T // window, B, C)``."""
    T, B, C = out.shape
    return out[: T - T % window].reshape(T // window, window, B, C).mean(1)


def cross_entropy(out, batch):
    """Softmax cross-entropy of the window-averaged logits against ``batch.y``, over labelled windows only."""
    logits = window_logits(out, batch.window)
    return F.cross_entropy(logits.flatten(0, 1), batch.y.flatten(), ignore_index=-1)


def accuracy(out, batch):
    """Fraction of labelled windows whose arg-max logit is the label."""
    logits, mask = window_logits(out, batch.window), batch.y >= 0
    return (logits.argmax(-1)[mask] == batch.y[mask]).float().mean()


def firing_rate_hz(z):
    """Mean rate per neuron in Hz over time and batch; spikes ``z`` are in units of 1/dt with dt in ms."""
    return z.mean(dim=(0, 1)) * 1000.0


def rate_regularizer(z, *, target_hz):
    r"""LSNN firing-rate penalty :math:`\sum_j (r_j - r_0)^2`, rates in spikes per ms (Bellec et al. 2018)."""
    return ((firing_rate_hz(z) - target_hz) / 1000.0).pow(2).sum()


def l2_penalty(weights):
    r""":math:`\sum_W \tfrac12 \|W\|^2` over ``weights``."""
    return sum(0.5 * w.pow(2).sum() for w in weights)


@dataclass(frozen=True)
class Objective:
    """Task loss + ``rate_weight`` * rate penalty toward ``target_hz`` + ``l2_weight`` * weight decay."""

    rate_weight: float = 0.0
    target_hz: float = 10.0
    l2_weight: float = 0.0

    def __call__(self, model, batch, rule=None):
        """Returns ``(loss, metrics)``; metrics are floats for the log (loss, accuracy, rate_hz)."""
        result = model(batch.x, rule=rule)
        task = cross_entropy(result.out, batch)
        loss = task
        z = result.hidden.z
        if self.rate_weight:
            loss = loss + self.rate_weight * rate_regularizer(z, target_hz=self.target_hz)
        if self.l2_weight:
            loss = loss + self.l2_weight * l2_penalty([model.cell.w_in, model.cell.w_rec, model.readout.w_out])
        metrics = {"loss": loss.item(), "task_loss": task.item(), "accuracy": accuracy(result.out, batch).item()}
        if hasattr(result.hidden, "threshold"):
            metrics["rate_hz"] = firing_rate_hz(z.detach()).mean().item()
        return loss, metrics
