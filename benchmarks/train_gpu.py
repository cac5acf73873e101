"""Time-boxed training at the `paper` settings on one device: the LSNN tutorial's store-recall and sequential MNIST.

Prints seconds per training step, peak GPU memory and the accuracy curve, so the cost of a full `paper` run can
be projected:
    python benchmarks/train_gpu.py --seconds 120
    RNNNOTES_FAST=0 python benchmarks/train_gpu.py --seconds 120         # the plain per-step path, for comparison
    RNNNOTES_CUDA_GRAPHS=0 python benchmarks/train_gpu.py --seconds 120  # the fused loop without CUDA graphs
    python benchmarks/train_gpu.py --seconds 60 --runs smnist --profile    # + where one step's time goes
Builds the same experiments as notebooks 02 and 03 (`rnnnotes.spiking_experiments`), without their results store.
"""
import argparse
import os
import statistics
import time

import torch

from rnnnotes import default_device
from rnnnotes.profiles import PROFILES
from rnnnotes.spiking_experiments import SequentialMNIST, StoreRecall
from rnnnotes.tasks import SMNIST
from rnnnotes.train import evaluator, fit
from timing import profile_summary, profiler_activities


def step_profiler(step, device):
    """A ``torch.profiler`` that records training step ``step`` alone (``.step()`` is called once per step)."""
    from torch.profiler import profile, schedule
    return profile(activities=profiler_activities(device), schedule=schedule(wait=step - 1, warmup=1, active=1,
                                                                              repeat=1))


def train(setup, seconds, *, evaluate, every, profile_step=None):
    """The experiment's ``fit``, time-boxed to ``seconds``; prints the held-out accuracy curve (and, with
    ``profile_step``, the profile of that training step) and returns the number of steps, the seconds in all and
    the median seconds of one training step (from one batch request to the next, so the evaluations every ``every``
    steps and the first steps' warm-up are left out)."""
    stamps, device = [], next(setup.model.parameters()).device
    profiler = step_profiler(profile_step, device) if profile_step else None

    def timed_task(step):
        stamps.append(time.perf_counter())
        if profiler:
            profiler.step()
        return setup.task(step)
    start = time.perf_counter()
    training = setup._replace(task=timed_task, evaluate=evaluate).with_config(eval_every=every, max_seconds=seconds,
                                                                              progress=False)
    if profiler:
        profiler.start()
    history = fit(training).history
    elapsed = time.perf_counter() - start
    if profiler:
        profiler.stop()
        if len(stamps) <= profile_step:
            print(f"== no profile: the run ended after {len(stamps)} steps, before step {profile_step} was done ==")
        else:
            calls, table = profile_summary(profiler.key_averages(), device, top=25)
            print(f"== training step {profile_step}: {calls} operator calls ==\n{table}")
    if torch.cuda.is_available():
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB")
        torch.cuda.reset_peak_memory_stats()
    for row in history.dropna(subset=["eval_accuracy"]).itertuples() if "eval_accuracy" in history else ():
        print(f"  step {row.step:5d}  held-out accuracy {row.eval_accuracy:.4f}")
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    return len(history), elapsed, statistics.median(intervals) if intervals else elapsed


def smnist(args, device):
    experiment = SequentialMNIST(variant="lsnn_deepr", mnist_dir=args.mnist_dir or "", n_regular=120, n_adaptive=100,
                                 n_iterations=100_000, batch_size=args.batch_size, n_delay=args.n_delay)
    setup = experiment.build(device)
    mnist = experiment.mnist()
    test = list(SMNIST(mnist.test_images, mnist.test_labels, batch_size=500).batches())
    steps, elapsed, per_step = train(setup, args.seconds, evaluate=evaluator(setup.objective, test),
                                     every=args.eval_every, profile_step=20 if args.profile else None)
    print(f"smnist LSNN+DEEP R, batch {args.batch_size}, n_delay {args.n_delay}, {mnist.source}: {steps} steps "
          f"in {elapsed:.0f} s (evaluations included), median {per_step:.3f} s/step; 36000 steps would take "
          f"{36000 * per_step / 3600:.1f} h")


def storerecall(args, device):
    experiment = StoreRecall(**PROFILES["02_store_recall"]["paper"])
    setup = experiment.build(device)
    test = [experiment.trials("test")(k).batch for k in range(16)]
    steps, elapsed, per_step = train(setup, args.seconds, evaluate=evaluator(setup.objective, test), every=25)
    print(f"store-recall at `paper` (batch {experiment.batch_size}, {experiment.n_delay} delays, states carried "
          f"over: {experiment.carry_state}): {steps} steps in {elapsed:.0f} s (evaluations included), median "
          f"{per_step:.3f} s/step")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0, help="time box of each run")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-delay", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--mnist-dir", default=None)
    parser.add_argument("--runs", default="storerecall,smnist")
    parser.add_argument("--profile", action="store_true", help="sMNIST: print where step 20's time goes")
    args = parser.parse_args()
    device = default_device()
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch "
          f"{torch.__version__}, RNNNOTES_FAST={os.environ.get('RNNNOTES_FAST', '1')}, "
          f"RNNNOTES_CUDA_GRAPHS={os.environ.get('RNNNOTES_CUDA_GRAPHS', '1')}")
    for run in args.runs.split(","):
        {"smnist": smnist, "storerecall": storerecall}[run](args, device)


if __name__ == "__main__":
    main()
