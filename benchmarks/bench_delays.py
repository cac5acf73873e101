"""Synaptic delays and memory of the LSNN layer of sequential MNIST (80 inputs, 120 LIF + 100 ALIF neurons).

Time: forward + backward (loss = spikes + potentials) with 10 synaptic delays against 1, on the fused path, and
the fused path against the plain per-op path with 10 delays. Memory: the bytes autograd keeps for the backward
pass of one forward over 840 steps, on the plain path, the plain path checkpointed every 84 steps, and the fused
path (``rnnnotes.memory.autograd_saved_bytes``; it does not see what a checkpoint keeps of its chunks' inputs, the
drive, which is added by hand).
    python benchmarks/bench_delays.py [--quick] [--threads 2]
    python benchmarks/bench_delays.py --device cuda --steps 840 --batch 256   # the paper's sMNIST layer on a GPU
"""
import argparse
from dataclasses import replace

import torch

from rnnnotes import numerics
from rnnnotes.cells import ALIF
from rnnnotes.memory import autograd_saved_bytes
from rnnnotes.params import ALIFParams
from timing import device_label, median_times, row


def layer(n_delay, device="cpu"):
    return ALIF(80, 120, 100, replace(ALIFParams.bellec2018_smnist(), n_delay=n_delay), seed=0).to(device)


def spikes(steps, batch, device="cpu"):
    return (torch.rand(steps, batch, 80, generator=torch.Generator().manual_seed(0)) < 0.05).float().to(device)


def passes(x):
    """Forward + backward of the 1- and 10-delay layers, fused and plain, by name."""
    cells = {1: layer(1, x.device), 10: layer(10, x.device)}

    def run(n_delay, fast):
        cell = cells[n_delay]
        cell.zero_grad(set_to_none=True)
        out = cell(x, fast=fast)
        (out.z.sum() + out.v.sum()).backward()
    return {f"{d} {'fused' if fast else 'plain'}": (lambda d=d, fast=fast: run(d, fast))
            for d in (1, 10) for fast in (True, False)}


def saved_megabytes(steps, batch):
    """MB autograd keeps for the backward pass of the 10-delay layer: plain, checkpointed, fused."""
    cell, x = layer(10), spikes(steps, batch)
    drive = steps * batch * cell.n * 4  # the chunks' input, kept by the checkpoints themselves
    plain = autograd_saved_bytes(lambda: cell(x, fast=False))[1]
    chunked = autograd_saved_bytes(lambda: cell(x, checkpoint=max(steps // 10, 1)))[1] + drive
    fused = autograd_saved_bytes(lambda: cell(x, fast=True))[1]
    return plain / 1e6, chunked / 1e6, fused / 1e6


def run(quick=False, *, device="cpu", steps=None, batch=64):
    """Rows: the cost of 10 delays, fused vs plain with delays, and (on CPU) the memory of the three paths."""
    steps, repeats = steps or (50 if quick else 200), 3 if quick else 5
    threads = f", {torch.get_num_threads()} threads" if torch.device(device).type == "cpu" else ""
    setting, label = f"80x120+100x{batch}x{steps} (n_in x n x B x T){threads}", device_label(device)
    with numerics.flush_denormal(), numerics.reuse_freed_memory():
        t = median_times(passes(spikes(steps, batch, device)), repeats, device=device)
        rows = [row("ALIF fwd+bwd, 10 synaptic delays vs 1 (fused)", setting, label, t["10 fused"], t["1 fused"],
                    "below 1: what the delays cost"),
                row("ALIF fwd+bwd with 10 delays, fused vs plain path", setting, label, t["10 fused"], t["10 plain"]),
                row("ALIF fwd+bwd with 1 delay, fused vs plain path", setting, label, t["1 fused"], t["1 plain"])]
        if torch.device(device).type != "cpu":
            return rows
        memory_steps, memory_batch = (84, 16) if quick else (840, 16)
        plain, chunked, fused = saved_megabytes(memory_steps, memory_batch)
    memory_setting = f"80x120+100x{memory_batch}x{memory_steps}, 10 delays"
    note = (f"kept for backward: plain {plain:.0f} MB, checkpointed every {max(memory_steps // 10, 1)} steps "
            f"{chunked:.0f} MB, fused {fused:.0f} MB (linear in batch: x16 for batch 256)")
    return rows + [row("BPTT memory, 10 delays: fused vs plain path", memory_setting, "cpu", None, None, note)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="default: 200 (50 with --quick)")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for r in run(args.quick, device=args.device, steps=args.steps, batch=args.batch):
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else ""
        print(f"{r['comparison']:55} {r['setting']:50} {r['ours_s'] or 0:8.3f} {r['reference_s'] or 0:8.3f} "
              f"{ratio:>6}  {r['note']}")


if __name__ == "__main__":
    main()
