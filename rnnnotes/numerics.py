"""Floating-point and allocator settings of the process, changed only for the length of a block."""
import ctypes
import ctypes.util
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


def _glibc():
    """The C library if it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _GLIBC_DEFAULT = -1, -3, 128 * 1024
_reusing = [0]  # depth of nested reuse_freed_memory blocks


@contextmanager
def reuse_freed_memory():
    """Inside the block glibc's ``malloc`` keeps freed blocks of up to 1 GiB for reuse (mmap threshold 1 GiB, no
    trimming) instead of handing them back to the system. Training allocates the same large activations every
    step, and fresh pages cost a page fault each: two fresh 110 MB tensors took 77 ms to fill, two reused ones
    15 ms. After the outermost block the thresholds are glibc's defaults (128 KiB) and the free heap is
    returned. Does nothing without glibc. Usable as a decorator."""
    libc, outermost = _glibc(), not _reusing[0]
    if libc and outermost:
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)
    _reusing[0] += 1
    try:
        yield
    finally:
        _reusing[0] -= 1
        if libc and outermost:
            libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT)
            libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT)
            libc.malloc_trim(0)
