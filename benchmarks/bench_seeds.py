"""S seeds trained as one batched model (``rnnnotes.seeds``) against one seed and against S seeds one after the other.

Notebook 04's book-profile network (delayed XOR, 120 sign-constrained ReLU rate neurons, batch 32, 700 ms delay,
DEEP R, Adam): the median seconds of one training step (forward, backward, optimizer, DEEP R; no evaluation) of
one seed as ``fit`` runs it, of S seeds as S such steps in a row, and of the S seeds as one vectorised step:
    python benchmarks/bench_seeds.py [--quick] [--seeds 8] [--threads 2]
"""
import argparse
from dataclasses import replace

import torch

from rnnnotes import numerics
from rnnnotes.rate_experiments import DelayedXORCredit
from rnnnotes.seeds import stack, train_step
from rnnnotes.train import _train_step
from timing import median_times, row

BOOK = dict(n_neurons=120, delay_ms=700, cue_ms=100, batch_size=32, lr=1e-3, n_iterations=10**6)


def _trainings(config, n_seeds):
    """The seeds' trainings of ``config``, without evaluation."""
    return [replace(config, seed=s).build("cpu")._replace(evaluate=None) for s in range(n_seeds)]


def time_rule(rule, *, n_seeds, repeats, settings):
    """Median seconds per training step: one seed, ``n_seeds`` seeds in a row, ``n_seeds`` seeds vectorised."""
    config = DelayedXORCredit(rule=rule, **settings)
    cpu = torch.device("cpu")
    one, sequential, group = _trainings(config, 1)[0], _trainings(config, n_seeds), stack(_trainings(config, n_seeds))
    steps = {"one": 0, "sequential": 0, "vectorised": 0}

    def advance(name):
        steps[name] += 1
        return steps[name] - 1

    fns = {"one": lambda: _train_step(one, advance("one"), cpu, None),
           "sequential": lambda: [_train_step(t, advance("sequential"), cpu, None) for t in sequential],
           "vectorised": lambda: train_step(group, advance("vectorised"), list(range(n_seeds)))}
    with numerics.flush_denormal(), numerics.reuse_freed_memory():
        return median_times(fns, repeats)


def run(quick=False, *, n_seeds=8):
    """Rows ``{comparison, setting, device, ours_s, reference_s, ratio, note}`` (ratio: reference / ours) for
    each rule: the vectorised step against ``n_seeds`` sequential steps, and against one seed's step."""
    settings = {**BOOK, "delay_ms": 200} if quick else BOOK
    rules, repeats = (["bptt", "modprop"], 3) if quick else (["bptt", "eprop", "mdgl", "modprop"], 5)
    rows = []
    for rule in rules:
        t = time_rule(rule, n_seeds=n_seeds, repeats=repeats, settings=settings)
        setting = (f"{rule}, N={settings['n_neurons']}, B={settings['batch_size']}, "
                   f"T={2 * settings['cue_ms'] + settings['delay_ms']}, S={n_seeds}, {torch.get_num_threads()} threads")
        rows.append(row(f"{n_seeds} seeds vectorised vs {n_seeds} sequential", setting, "cpu", t["vectorised"],
                        t["sequential"], "per training step"))
        rows.append(row(f"{n_seeds} seeds vectorised vs one seed", setting, "cpu", t["vectorised"], t["one"],
                        f"the {n_seeds} seeds cost {t['vectorised'] / t['one']:.2f}x one seed"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 200 ms delay, two rules, three repeats")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'comparison':38s} {'setting':52s} {'ours (s)':>9s} {'ref (s)':>9s} {'ratio':>6s}  note")
    for r in run(args.quick, n_seeds=args.seeds):
        print(f"{r['comparison']:38s} {r['setting']:52s} {r['ours_s']:9.3f} {r['reference_s']:9.3f} "
              f"{r['ratio']:6.2f}  {r['note']}")


if __name__ == "__main__":
    main()
