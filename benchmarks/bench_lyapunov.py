"""The cost of k Lyapunov exponents relative to one forward pass, side by side with a naive per-column loop.

Gradient flossing's network (tanh, no leak, batch 1) driven by random bits over T steps, QR every ``--t-ons``
steps (1, as the original, by default). For each N
and k: one forward pass (the step over T steps), the spectrum with the closed-form tangent map (what rate cells
use), with batched Jacobian-vector products (``torch.func.jvp`` under ``vmap``, what any other cell uses), and with
a naive loop of one ``jvp`` per column; times are medians, ratios are to the forward pass:
    python benchmarks/bench_lyapunov.py
"""
import argparse

import torch
from torch.func import jvp

from rnnnotes import numerics
from rnnnotes.cells import VanillaRNN
from rnnnotes.lyapunov import lyapunov_spectrum, random_basis
from timing import median_time, row


def naive_spectrum(step, h0, inputs, k):
    """The same QR method with one forward-mode product per column, in a Python loop."""
    Q, h, total = random_basis(h0.shape[1], k)[0], h0, 0.0
    for x in inputs:
        columns = []
        for i in range(k):
            h_next, column = jvp(lambda state: step(state, x), (h,), (Q[:, i][None],))
            columns.append(column[0])
        h = h_next
        Q, R = torch.linalg.qr(torch.stack(columns, 1))
        total = total + R.diagonal().abs().log()
    return total / inputs.shape[0]


def options(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--t-ons", type=int, default=1, help="steps between QRs (the naive loop: every step)")
    return parser.parse_args(argv)


def measure(args):
    """Yield ``(N, k, seconds)`` with the seconds of the forward pass and of each spectrum method, by name."""
    with numerics.flush_denormal(), torch.no_grad():
        for n in args.sizes:
            cell = VanillaRNN(1, n, seed=0)
            state_map = cell.state_map()
            h0 = state_map.pack(cell.initial_state(1))
            inputs = torch.bernoulli(torch.full((args.steps, 1, 1), 0.5), generator=torch.Generator().manual_seed(0))

            def forward():
                h = h0
                for x in inputs:
                    h = state_map.step(h, x)
            base = median_time(forward, args.repeats)
            for k in sorted({1, n // 4, n}):
                yield n, k, dict(
                    forward=base,
                    closed=median_time(lambda: lyapunov_spectrum(state_map, h0, inputs, k, t_ons=args.t_ons),
                                       args.repeats),
                    batched=median_time(lambda: lyapunov_spectrum(state_map.step, h0, inputs, k, t_ons=args.t_ons),
                                        args.repeats),
                    naive=median_time(lambda: naive_spectrum(state_map.step, h0, inputs, k), 1, warmup=False))


def rows(args, measured):
    """The closed-form and the batched spectrum against the naive per-column loop."""
    out = []
    for n, k, t in measured:
        setting = f"N={n}, k={k}, T={args.steps}, QR every {args.t_ons}"
        for method, name in (("closed", "closed-form tangents"), ("batched", "batched jvp")):
            note = f"{t[method] / t['forward']:.1f}x a forward pass ({t['forward'] * 1e3:.1f} ms)"
            out.append(row(f"Lyapunov spectrum: {name} vs per-column loop", setting, "cpu", t[method], t["naive"],
                           note))
    return out


def run(quick=False):
    """Comparison rows at the script's defaults (``quick``: N = 64 only, T = 20)."""
    args = options(["--sizes", "64", "--steps", "20"] if quick else [])
    return rows(args, measure(args))


def main():
    args = options()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; T = {args.steps}, batch 1, QR every "
          f"{args.t_ons} step(s)")
    print("   N    k  forward ms  closed-form ms (x)  batched jvp ms (x)  naive loop ms (x)")
    for n, k, t in measure(args):
        base, closed, batched, naive = t["forward"], t["closed"], t["batched"], t["naive"]
        print(f"{n:4d} {k:4d}  {base * 1e3:10.1f}  {closed * 1e3:9.1f} ({closed / base:5.1f})  "
              f"{batched * 1e3:9.1f} ({batched / base:5.1f})  {naive * 1e3:9.1f} ({naive / base:6.1f})")


if __name__ == "__main__":
    main()
