"""Floating-point settings of the process, changed only for the length of a block."""
from contextlib import contextmanager

import torch

_SMALLEST_NORMAL = 2.2250738585072014e-308  # float64; a quarter of it is subnormal


def flushing_denormal():
    """Whether torch flushes subnormal floats to zero now; torch has no getter, so ``2.2e-308 / 4 == 0`` is probed."""
    return (torch.tensor([_SMALLEST_NORMAL], dtype=torch.float64) / 4).item() == 0.0


@contextmanager
def flush_denormal():
    """Flush subnormal floats to zero inside the block (``torch.set_flush_denormal(True)``), then restore the
    previous setting, also on an exception. Gradients that decay along long recurrences reach subnormal floats,
    which x86 CPUs process far more slowly. Usable as a decorator: ``@flush_denormal()``."""
    before = flushing_denormal()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
