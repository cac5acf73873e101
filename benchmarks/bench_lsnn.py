"""Forward + backward of recurrent spiking layers: rnnnotes ALIF and LIF against norse (LSNNRecurrent,
LIFRecurrent) and snntorch (RLeaky, LIF only), and rnnnotes' fused path against its plain per-op path.

Same sizes, batch, steps, float32 and weights; loss = sum of output spikes, backward to the input and recurrent
weights. Prints timesteps x batch per second of each implementation, on CPU and on CUDA when present; the
like-for-like choices are in ``peers.py``.

    .venv/bin/python benchmarks/bench_lsnn.py                        # default sizes
    .venv/bin/python benchmarks/bench_lsnn.py --sizes 80x220x64x200 --profile

A size is ``n_in x n x B x T`` (every rnnnotes ALIF neuron adaptive, as in norse) or ``n_in x n_lif+n_alif x B x
T`` (rnnnotes' ALIF layer mixes LIF and adaptive neurons; the peers run all n neurons of their kind).
"""
import argparse
import hashlib
import os
import pathlib

import norse
import snntorch
import torch

from peers import Size, passes
from rnnnotes import cells, numerics
from timing import device_label, median_times, profile_summary, profiler_activities, row

SIZES = ["80x120+100x64x400", "80x55+45x16x400", "80x120+100x64x840"]
QUICK_SIZES = ["80x120+100x64x50"]
PEERS = {"ALIF": ["norse LSNN"], "LIF": ["norse LIF", "snntorch LIF"]}


def devices():
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def measure(size, device, *, warmup, repeats):
    """Median seconds of one forward + backward and firing rate (Hz at dt = 1 ms) of each implementation."""
    fns = passes(size, device)
    rates = {name: fn().mean().item() * 1000 for name, fn in fns.items()}
    seconds = median_times(fns, repeats, device=device, warmup=warmup)
    return {name: (seconds[name], rates[name]) for name in fns}


def rows(size, device, measured):
    """Comparison rows: each rnnnotes layer against its peers, and its fused against its plain path."""
    setting = f"{size} (n_in x n x B x T), {torch.get_num_threads()} threads" if device.type == "cpu" else str(size)
    out = []
    for layer, peers in PEERS.items():
        ours, ours_rate = measured[f"rnnnotes {layer}"]
        for peer in peers:
            theirs, their_rate = measured[peer]
            note = f"rates {ours_rate:.0f} / {their_rate:.0f} Hz"
            if peer == "snntorch LIF":
                note += "; snntorch has no adaptive-threshold neuron, so LIF only"
            elif layer == "ALIF" and size.n_regular:
                note += f"; norse: all {size.n} neurons adaptive"
            out.append(row(f"{layer} fwd+bwd vs {peer}", setting, device_label(device), ours, theirs, note))
        plain = measured[f"rnnnotes {layer} plain"][0]
        out.append(row(f"{layer} fast vs plain path", setting, device_label(device), ours, plain, ""))
    return out


def run(quick=False):
    """The comparison rows at the issue's sizes (``quick``: one short size), on CPU and on CUDA when present."""
    warmup, repeats = (1, 3) if quick else (2, 7)
    out = []
    with numerics.flush_denormal(), numerics.reuse_freed_memory():  # as fit does; the peers get the same
        for device in devices():
            for size in map(Size.parse, QUICK_SIZES if quick else SIZES):
                out += rows(size, device, measure(size, device, warmup=warmup, repeats=repeats))
    return out


def profile(fns, device, steps, top):
    """Top ops by self time of one forward+backward, and op calls per time step, for each implementation."""
    from torch.profiler import profile as torch_profile
    for name, fn in fns.items():
        fn()
        with torch_profile(activities=profiler_activities(device)) as prof:
            fn()
        calls, table = profile_summary(prof.key_averages(), device, top)
        print(f"\n== profile {name} on {device.type}: {calls / steps:.0f} op calls per time step (fwd+bwd) ==")
        print(table)


def print_header(args, device_names):
    package = pathlib.Path(cells.__file__).parent
    sources = sorted([*package.glob("*.py"), *package.glob("*.cpp")])
    source_sha = hashlib.sha1(b"".join(p.read_bytes() for p in sources)).hexdigest()[:8]
    print(f"torch {torch.__version__}, norse {getattr(norse, '__version__', '?')}, snntorch {snntorch.__version__}, "
          f"rnnnotes sources sha1 {source_sha} ({package}), {args.threads} CPU threads (load avg "
          f"{os.getloadavg()[0]:.1f}), {torch.cuda.get_device_name() if 'cuda' in device_names else 'no GPU'}; "
          f"median of {args.repeats}; timesteps x batch per second, firing rate in Hz")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=SIZES, help="one or more (default: %(default)s)")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="profile the first size on each device")
    parser.add_argument("--top", type=int, default=15, help="rows of each profile table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [torch.device(d) for d in args.devices] if args.devices else devices()
    print_header(args, [d.type for d in chosen])
    with numerics.flush_denormal(), numerics.reuse_freed_memory():  # as fit does; the peers get the same
        for device in chosen:
            for i, size in enumerate(map(Size.parse, args.sizes)):
                measured = measure(size, device, warmup=args.warmup, repeats=args.repeats)
                speeds = ", ".join(f"{name} {size.steps * size.batch / t:.0f} ({rate:.0f} Hz)"
                                   for name, (t, rate) in measured.items())
                print(f"{device.type} {size}: {speeds}", flush=True)
                if args.profile and i == 0:
                    profile(passes(size, device), device, size.steps, args.top)


if __name__ == "__main__":
    main()
