"""The batch contract every task produces and every loss reads: time-first input, windowed targets, a mask."""
from dataclasses import dataclass, replace

import torch

from .checks import require_count, require_shape
from .losses import LOSSES


@dataclass(frozen=True, eq=False)
class Batch:
    r"""One batch, unpacked as ``x, y, mask = batch``; the readout of window ``k`` is
    :math:`\bar o_k = \frac1w \sum_{t=kw}^{kw+w-1} o_t` with ``w = window``.

    ``x (T, B, n_in)`` floating input. ``loss`` names the task's loss, a key of ``losses.LOSSES``:
    ``"cross_entropy"`` takes int64 class labels ``y (T // window, B)`` (-1 allowed where masked), ``"mse"``
    floating targets ``y (T // window, B, n_out)``, ``"bce"`` binary targets in [0, 1] of that shape.
    ``mask (T // window, B)`` bool: the windows that carry a target.
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    window: int = 1
    loss: str = "cross_entropy"

    def __post_init__(self):
        _check_batch(self)

    def __iter__(self):
        return iter((self.x, self.y, self.mask))

    def to(self, device):
        """A copy with ``x``, ``y`` and ``mask`` on ``device``."""
        return replace(self, x=self.x.to(device), y=self.y.to(device), mask=self.mask.to(device))


def _check_batch(batch):
    """Raise ``ValueError`` naming the field of ``batch`` that breaks the :class:`Batch` contract."""
    x, y, mask, window, loss = batch.x, batch.y, batch.mask, batch.window, batch.loss
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    require_count(window=window)
    for name, value in (("x", x), ("y", y), ("mask", mask)):
        if not torch.is_tensor(value):
            raise ValueError(f"{name} must be a tensor, got {type(value).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got dtype {x.dtype}")
    require_shape("x", x, (None, None, None))
    if loss == "cross_entropy" and y.dtype != torch.int64:
        raise ValueError(f"y must hold int64 class labels for loss='cross_entropy', got dtype {y.dtype}")
    if loss in ("mse", "bce") and not y.is_floating_point():
        raise ValueError(f"y must hold floating targets for loss={loss!r}, got dtype {y.dtype}")
    require_shape("y", y, (None, x.shape[1]) + ((None,) if loss in ("mse", "bce") else ()))
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got dtype {mask.dtype}")
    require_shape("mask", mask, tuple(y.shape[:2]))
    if x.shape[0] // window != y.shape[0]:
        raise ValueError(f"x must cover the {y.shape[0]} windows of y: T // window == {y.shape[0]} with "
                         f"window={window}, got T={x.shape[0]}")
    if loss == "cross_entropy" and (mask & (y < 0)).any():
        raise ValueError("y must be a class label >= 0 wherever mask is True")
    if loss == "bce" and not bool(((y >= 0) & (y <= 1))[mask].all()):
        raise ValueError("y must hold targets in [0, 1] wherever mask is True (loss='bce')")
