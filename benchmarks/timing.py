"""Wall-clock timing shared by the benchmarks."""
import statistics
import time

import torch


def median_time(fn, repeats, *, device=None, warmup=True):
    """Median seconds of ``repeats`` calls of ``fn`` (after one untimed call when ``warmup``); on a CUDA ``device``
    the queue is drained before and after each call."""
    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else (lambda: None)
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
