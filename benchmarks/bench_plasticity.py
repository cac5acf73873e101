"""BPTT vs BOHP's forward-mode gradient for a plastic RNN: time per gradient and memory, side by side in one run.

One episode of BOHP's length (66 steps, batch 1, float64 for both), random inputs; medians over repeats. Memory:
the forward mode's carried tensors (``plastic.forward_mode_bytes``) against the bytes autograd saves for BPTT
(``memory.autograd_saved_bytes``); on a GPU also the allocator's peak. Then BPTT alone up to N = 1000 (float32,
differentiable plasticity's 106-step episode):
    python benchmarks/bench_plasticity.py
"""
import argparse

import torch

from rnnnotes import resolve_device
from rnnnotes.memory import autograd_saved_bytes
from rnnnotes.plastic import PlasticRNN, bptt_gradient, forward_mode_bytes, forward_mode_gradient
from timing import device_label, median_time, row


def problem(n, steps, dtype, device):
    net = PlasticRNN(n, seed=0).to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(steps, 1, n, generator=g, dtype=dtype).to(device)
    return net, u, torch.randn(1, n, generator=g, dtype=dtype).to(device)


def options(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[29, 50])
    parser.add_argument("--bptt-sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


def compare(args, device):
    """Yield ``(N, forward-mode s, BPTT s, BPTT saved bytes)`` for each of ``args.sizes`` (66 steps, float64)."""
    for n in args.sizes:
        net, u, target = problem(n, 66, torch.float64, device)
        forward = median_time(lambda: forward_mode_gradient(net, u, target), args.repeats, device=device)
        bptt = median_time(lambda: bptt_gradient(net, u, target), args.repeats, device=device)
        yield n, forward, bptt, autograd_saved_bytes(lambda: bptt_gradient(net, u, target))[1]


def run(quick=False):
    """Comparison rows: BPTT against the forward-mode gradient (``quick``: N = 29, one repeat)."""
    args = options(["--sizes", "29", "--repeats", "1"] if quick else [])
    device = resolve_device(args.device)
    return [row("Plastic RNN gradient: BPTT vs forward mode", f"N={n}, 66 steps, batch 1, float64",
                device_label(device), bptt, forward,
                f"memory: forward mode carries {forward_mode_bytes(n) / 1e6:.1f} MB, BPTT saves {saved / 1e6:.2f} MB")
            for n, forward, bptt, saved in compare(args, device)]


def main():
    args = options()
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; 66 steps, batch 1, float64")
    print("   N  forward-mode s  BPTT s  speed-up  forward-mode carried MB  BPTT saved MB")
    for n, forward, bptt, saved in compare(args, device):
        print(f"{n:4d}  {forward:13.3f}  {bptt:6.4f}  {forward / bptt:8.0f}  "
              f"{forward_mode_bytes(n) / 1e6:23.1f}  {saved / 1e6:13.2f}")
    print("BPTT alone, float32, 106 steps:")
    for n in args.bptt_sizes:
        net, u, target = problem(n, 106, torch.float32, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = median_time(lambda: bptt_gradient(net, u, target), args.repeats, device=device)
        saved = autograd_saved_bytes(lambda: bptt_gradient(net, u, target))[1]
        peak = (f", allocator peak {torch.cuda.max_memory_allocated(device) / 1e6:.0f} MB"
                if device.type == "cuda" else "")
        print(f"{n:5d}: {seconds:.3f} s per gradient, autograd saved {saved / 1e6:.0f} MB{peak}; forward mode would "
              f"carry {forward_mode_bytes(n, dtype=torch.float32) / 1e9:.0f} GB")


if __name__ == "__main__":
    main()
