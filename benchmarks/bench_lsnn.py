"""Forward + backward throughput of one recurrent ALIF (LSNN) layer: rnnnotes vs norse's LSNNRecurrent.

Same sizes, batch, steps, float32 and weights; loss = sum of output spikes, backward to w_in and w_rec.
Prints timesteps x batch per second for each and the ratio rnnnotes / norse, on CPU and on CUDA when present.

    .venv/bin/python benchmarks/bench_lsnn.py                        # default sizes
    .venv/bin/python benchmarks/bench_lsnn.py --sizes 80x220x64x200 --profile

Like-for-like choices (neither model can be configured to the other exactly):
- rnnnotes ALIF(n_in, n_regular=0, n_adaptive=n): norse adapts every neuron; n_ref=0 and n_delay=1 (norse has
  neither refractoriness nor synaptic delays).
- norse tau_syn = dt, so its synaptic current is just last step's W x + W_rec z (no extra filter); tau_mem 20 ms,
  tau_adapt 200 ms, dt 1 ms, v_th = thr = 0.01; norse's jump beta = 1.6 (1 - exp(-dt/tau_a)) matches rnnnotes'
  threshold jump per spike; surrogate "triangle" with alpha = gamma = 0.3 (the Bellec pseudo-derivative).
- Remaining differences: norse uses Euler decay and reset-to-zero, rnnnotes exact decay and reset by subtraction;
  norse's input reaches v one step later; norse projects the input inside the time loop, rnnnotes with one
  matmul before it.
"""
import argparse
import hashlib
import math
import os
import pathlib
import statistics
import time

import norse
import torch
from norse.torch import LSNNParameters, LSNNRecurrent

from rnnnotes import cells
from rnnnotes.cells import ALIF


def build(n_in, n, device, seed=0):
    """An rnnnotes ALIF and a norse LSNNRecurrent with the same weights and time constants."""
    ours = ALIF(n_in, 0, n, tau_m=20.0, tau_a=200.0, beta=1.6, thr=0.01, n_ref=0, dt=1.0, gamma=0.3, n_delay=1,
                seed=seed)
    t = torch.as_tensor
    p = LSNNParameters(tau_syn_inv=t(1 / 1e-3), tau_mem_inv=t(1 / 20e-3), tau_adapt_inv=t(1 / 200e-3), v_leak=t(0.0),
                       v_th=t(0.01), v_reset=t(0.0), beta=t(1.6 * (1 - math.exp(-1 / 200))), method="triangle",
                       alpha=0.3)
    theirs = LSNNRecurrent(n_in, n, p=p, dt=1e-3)
    g = torch.Generator().manual_seed(seed)  # the benchmark's own weights, whatever either library draws
    with torch.no_grad():  # norse computes x @ W.T
        ours.w_in.copy_(torch.randn(n_in, n, generator=g) / math.sqrt(n_in))
        ours.w_rec.copy_(torch.randn(n, n, generator=g) / math.sqrt(n))
        theirs.input_weights.copy_(ours.w_in.T)
        theirs.recurrent_weights.copy_(ours.recurrent_weights().T)
    return ours.to(device), theirs.to(device)


def runners(ours, theirs, x):
    def run_ours():
        ours.zero_grad(set_to_none=True)
        z = ours(x).z
        z.sum().backward()
        return z

    def run_theirs():
        theirs.zero_grad(set_to_none=True)
        z, _ = theirs(x)
        z.sum().backward()
        return z

    return {"rnnnotes": run_ours, "norse": run_theirs}


def median_seconds(fns, device, warmup, repeats):
    """Median seconds per call of each function; repeats interleave the functions so load spikes hit all alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def profile(fns, device, steps, top):
    """Top ops by self time of one forward+backward, and op calls per time step, for each implementation."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, fn in fns.items():
        fn()
        with torch_profile(activities=activities) as prof:
            fn()
        events = prof.key_averages()
        calls = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CPU
                    and not e.key.startswith(("autograd::engine", "ProfilerStep")))
        print(f"\n== profile {name} on {device.type}: {calls / steps:.0f} op calls per time step (fwd+bwd) ==")
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(events.table(sort_by=sort, row_limit=top, max_name_column_width=45))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["80x220x64x200", "80x100x16x200"],
                        help="n_in x n x batch x steps, one or more (default: %(default)s)")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="profile the first size on each device")
    parser.add_argument("--top", type=int, default=15, help="rows of each profile table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as rnnnotes' fit does; norse gets the same setting
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    package = pathlib.Path(cells.__file__).parent
    source_sha = hashlib.sha1(b"".join(p.read_bytes() for p in sorted(package.glob("*.py")))).hexdigest()[:8]
    norse_version = getattr(norse, "__version__", "?")
    print(f"torch {torch.__version__}, norse {norse_version}, rnnnotes sources sha1 {source_sha} ({package}), "
          f"{args.threads} CPU threads (load avg {os.getloadavg()[0]:.1f}), "
          f"{torch.cuda.get_device_name() if 'cuda' in devices else 'no GPU'}; median of {args.repeats}")
    header = f"{'device':6} {'n_in':>4} {'n':>4} {'batch':>5} {'steps':>5} | {'rnnnotes T*B/s':>14} " \
             f"{'norse T*B/s':>12} {'ratio':>6} | {'rate ours':>9} {'rate norse':>10}"
    print(header + "\n" + "-" * len(header))
    to_profile = []
    for device in map(torch.device, devices):
        for i, size in enumerate(args.sizes):
            n_in, n, batch, steps = map(int, size.split("x"))
            ours, theirs = build(n_in, n, device)
            g = torch.Generator().manual_seed(1)
            x = (torch.rand(steps, batch, n_in, generator=g) < 0.05).float().to(device)  # 50 Hz input spikes
            fns = runners(ours, theirs, x)
            rate = {k: fn().mean().item() * 1000 for k, fn in fns.items()}  # Hz at dt = 1 ms
            seconds = median_seconds(fns, device, args.warmup, args.repeats)
            speed = {k: steps * batch / t for k, t in seconds.items()}
            print(f"{device.type:6} {n_in:4d} {n:4d} {batch:5d} {steps:5d} | {speed['rnnnotes']:14.0f} "
                  f"{speed['norse']:12.0f} {speed['rnnnotes'] / speed['norse']:6.2f} | "
                  f"{rate['rnnnotes']:7.1f}Hz {rate['norse']:8.1f}Hz", flush=True)
            if args.profile and i == 0:
                to_profile.append((fns, device, steps))
    for fns, device, steps in to_profile:
        profile(fns, device, steps, args.top)


if __name__ == "__main__":
    main()
