"""Task losses and metrics on window-averaged readouts (see ``tasks.Batch``), the firing-rate regulariser and spike
statistics.

A batch names its loss (``batch.loss``, a key of :data:`LOSSES`): windowed cross-entropy for class labels, masked
MSE for real-valued targets. Both see the readout averaged over each window, and only the windows in ``batch.mask``.
"""
from dataclasses import dataclass
from functools import reduce

import torch
from torch.nn import functional as F

from .checks import require_nonnegative


def window_logits(out, window):
    r"""Average ``out (T, B, C)`` over windows of ``window`` steps, ``(T // window, B, C)``:
    :math:`\bar o_k = \frac1w \sum_{t=kw}^{kw+w-1} o_t`."""
    T, B, C = out.shape
    return out[: T - T % window].reshape(T // window, window, B, C).mean(1)


def windowed_cross_entropy(out, batch):
    r"""Mean over the masked windows :math:`M` of :math:`-\log \mathrm{softmax}(\bar o_{k,b})_{y_{k,b}}`."""
    logits = window_logits(out, batch.window)
    labels = torch.where(batch.mask, batch.y, -1)  # ignored, not indexed: no host sync
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-1)


def masked_mse(out, batch):
    r""":math:`\frac{1}{|M|\,n_{out}} \sum_{(k,b) \in M} \|\bar o_{k,b} - y_{k,b}\|^2` over the masked windows
    :math:`M`; targets outside :math:`M` (even NaN) contribute nothing, not even to the gradient."""
    if out.shape[-1] != batch.y.shape[-1]:
        raise ValueError(f"out must have the n_out = {batch.y.shape[-1]} outputs of y, got {out.shape[-1]}")
    diff = window_logits(out, batch.window) - batch.y
    diff = torch.where(batch.mask[..., None], diff, 0.0)
    return diff.pow(2).sum() / (batch.mask.sum() * diff.shape[-1])


def masked_bce(out, batch):
    r"""Binary cross-entropy with logits, :math:`-[y \log \sigma(\bar o) + (1 - y) \log(1 - \sigma(\bar o))]`,
    averaged over the masked windows and the ``n_out`` outputs (the gradient-flossing tasks' loss)."""
    if out.shape[-1] != batch.y.shape[-1]:
        raise ValueError(f"out must have the n_out = {batch.y.shape[-1]} outputs of y, got {out.shape[-1]}")
    logits = window_logits(out, batch.window)
    target = torch.where(batch.mask[..., None], batch.y, 0.0)
    each = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return torch.where(batch.mask[..., None], each, 0.0).sum() / (batch.mask.sum() * each.shape[-1])


LOSSES = {"cross_entropy": windowed_cross_entropy, "mse": masked_mse, "bce": masked_bce}
CLASSIFICATION = ("cross_entropy", "bce")  # losses whose batches have an accuracy


def task_loss(out, batch):
    """The loss the batch names: ``LOSSES[batch.loss](out, batch)``."""
    return LOSSES[batch.loss](out, batch)


def accuracy(out, batch):
    """Cross-entropy batches: the fraction of masked windows whose arg-max window-averaged logit is the label.
    BCE batches: the fraction of masked (window, output) pairs where ``logit >= 0`` matches ``y >= 0.5``."""
    if batch.loss not in CLASSIFICATION:
        raise ValueError(f"accuracy needs class labels (loss in {CLASSIFICATION}), got loss={batch.loss!r}")
    logits, mask = window_logits(out, batch.window), batch.mask
    if batch.loss == "bce":
        return ((logits >= 0) == (batch.y >= 0.5))[mask].float().mean()
    return (logits.argmax(-1)[mask] == batch.y[mask]).float().mean()


def firing_rate_hz(z):
    """Mean rate per neuron in Hz over time and batch; spikes ``z`` are in units of 1/dt with dt in ms."""
    return z.mean(dim=(0, 1)) * 1000.0


def isi_cv(z):
    r"""Regularity of firing: the coefficient of variation :math:`\sigma / \mu` of the inter-spike intervals of
    ``z (T, n)``, pooled over the neurons (NaN with fewer than two intervals)."""
    intervals = torch.cat([torch.diff(torch.nonzero(column).flatten()) for column in z.T]).double()
    return (intervals.std(correction=0) / intervals.mean()).item() if intervals.numel() > 1 else float("nan")


def rate_regularizer(z, *, target_hz):
    r"""LSNN firing-rate penalty :math:`\sum_j (r_j - r_0)^2`, rates in spikes per ms (Bellec et al. 2018)."""
    require_nonnegative(target_hz=target_hz)
    return ((firing_rate_hz(z) - target_hz) / 1000.0).pow(2).sum()


def l2_penalty(weights):
    r""":math:`\sum_W \tfrac12 \|W\|^2` over ``weights``."""
    return sum(0.5 * w.pow(2).sum() for w in weights)


@dataclass(frozen=True)
class Objective:
    """The batch's task loss (:func:`task_loss`) + ``rate_weight`` * rate penalty toward ``target_hz`` +
    ``l2_weight`` * weight decay. Classification or regression: the batch says which."""

    rate_weight: float = 0.0
    target_hz: float = 10.0
    l2_weight: float = 0.0

    decayed = ("cell.w_in", "cell.w_rec", "readout.w_out")  # the weights under the L2 penalty

    def __post_init__(self):
        require_nonnegative(rate_weight=self.rate_weight, target_hz=self.target_hz, l2_weight=self.l2_weight)

    def loss(self, result, batch, weights):
        """``(loss, task loss)`` of a network's output ``result`` on ``batch``; ``weights`` maps the names in
        ``decayed`` to the tensors to penalise (a model's own, or substitutes for a Hessian)."""
        task = task_loss(result.out, batch)
        loss = task
        if self.rate_weight:
            loss = loss + self.rate_weight * rate_regularizer(result.hidden.z, target_hz=self.target_hz)
        if self.l2_weight:
            loss = loss + self.l2_weight * l2_penalty([weights[name] for name in self.decayed])
        return loss, task

    def __call__(self, model, batch, rule=None, carry=None):
        """Returns ``(loss, metrics)``; metrics are floats for the log: loss, task_loss, accuracy (class labels
        only), rate_hz (spiking cells only). ``carry``: the state carried across batches (``model.Carry``)."""
        result = model(batch.x, rule=rule) if carry is None else model(batch.x, rule=rule, carry=carry)
        weights = {name: reduce(getattr, name.split("."), model) for name in self.decayed} if self.l2_weight else {}
        loss, task = self.loss(result, batch, weights)
        return loss, self.metrics(result, batch, loss, task)

    def metrics(self, result, batch, loss, task):
        """The floats logged for ``(loss, task)`` of :meth:`loss` on ``batch`` (see ``__call__``)."""
        metrics = {"loss": loss.item(), "task_loss": task.item()}
        if batch.loss in CLASSIFICATION:
            metrics["accuracy"] = accuracy(result.out, batch).item()
        if hasattr(result.hidden, "threshold"):
            metrics["rate_hz"] = firing_rate_hz(result.hidden.z.detach()).mean().item()
        return metrics
