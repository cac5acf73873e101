"""Wall-clock timing shared by the benchmarks."""
import statistics
import time

import torch


def median_times(fns, repeats, *, device=None, warmup=1):
    """Median seconds per call of each function in the dict ``fns``, after ``warmup`` untimed calls of each. The
    repeats interleave the functions, so a burst of other load hits all of them alike; on a CUDA ``device`` the
    queue is drained before and after each call."""
    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def median_time(fn, repeats, *, device=None, warmup=True):
    """Median seconds of ``repeats`` calls of ``fn`` (after one untimed call when ``warmup``)."""
    return median_times({"fn": fn}, repeats, device=device, warmup=int(warmup))["fn"]


def row(comparison, setting, device, ours_s, reference_s, note=""):
    """One result: rnnnotes' and the reference's seconds, and their ratio (reference / rnnnotes: the speed-up;
    None when either was not measured)."""
    ratio = reference_s / ours_s if ours_s and reference_s else None
    return dict(comparison=comparison, setting=setting, device=device, ours_s=ours_s, reference_s=reference_s,
                ratio=ratio, note=note)


def device_label(device):
    """``cpu``, or ``cuda (<GPU name>)``."""
    device = torch.device(device)
    return device.type if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})"


def profiler_activities(device):
    """What ``torch.profiler`` records on ``device``: CPU operators, and CUDA kernels on a GPU."""
    from torch.profiler import ProfilerActivity
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])


def profile_summary(events, device, top):
    """``(operator calls, table)`` of a profile's ``key_averages()``: the calls leave out the autograd engine's and
    the profiler's own entries; the table lists the ``top`` operators by self time on ``device``."""
    calls = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CPU
                and not e.key.startswith(("autograd::engine", "ProfilerStep")))
    sort = "self_cuda_time_total" if torch.device(device).type == "cuda" else "self_cpu_time_total"
    return calls, events.table(sort_by=sort, row_limit=top, max_name_column_width=50)
