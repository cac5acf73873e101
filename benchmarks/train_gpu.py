"""Time-boxed training at the `paper` settings on one device: the LSNN tutorial's store-recall and sequential MNIST.

Prints seconds per training step and the accuracy curve, so the cost of a full `paper` run can be projected:
    python benchmarks/train_gpu.py --seconds 120
Uses the same module code as notebooks 02 and 03 (without their results store).
"""
import argparse
import time

import torch

from rnnnotes import default_device
from rnnnotes.cells import ALIF
from rnnnotes.data import load_mnist
from rnnnotes.losses import Objective
from rnnnotes.model import Network, Readout
from rnnnotes.rewiring import DeepR, neuron_signs, sign_constrained_init
from rnnnotes.tasks import SMNIST, TaskStream, store_recall
from rnnnotes.train import FitConfig, evaluator, fit


def train(model, task, objective, optimizer, seconds, *, evaluate, every, rewiring=None, steps=100_000):
    """``fit`` time-boxed to ``seconds``; prints the held-out accuracy curve and returns (steps, seconds)."""
    start = time.perf_counter()
    config = FitConfig(steps=steps, eval_every=every, max_seconds=seconds, progress=False)
    history = fit(model, task, objective, optimizer, config, rewiring=rewiring, evaluate=evaluate).history
    elapsed = time.perf_counter() - start
    for row in history.dropna(subset=["eval_accuracy"]).itertuples():
        print(f"  step {row.step:5d}  held-out accuracy {row.eval_accuracy:.4f}")
    return len(history), elapsed


def smnist(args, device):
    mnist = load_mnist(args.mnist_dir)
    n, g = 220, torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cell = ALIF(80, 120, 100, tau_a=700.0, beta=1.8, thr=0.01, n_ref=5, n_delay=args.n_delay, seed=0)
    model = Network(cell, Readout(n, 10, tau_out=20.0, seed=0))
    rec_signs = neuron_signs(n, frac_excitatory=0.75)
    signs = {"w_in": neuron_signs(80, frac_excitatory=0.75, generator=g, shuffle=True), "w_rec": rec_signs,
             "w_out": rec_signs}
    weights = {"w_in": cell.w_in, "w_rec": cell.w_rec, "w_out": model.readout.w_out}
    with torch.no_grad():
        for name, w in weights.items():
            w.copy_(sign_constrained_init(*w.shape, signs=signs[name], connectivity=0.12, generator=g))
    model.to(device)
    rewiring = DeepR(weights, signs, connectivity=0.12, l1=0.01, seed=0,
                     allowed={"w_rec": ~torch.eye(n, dtype=torch.bool)})
    objective = Objective(rate_weight=0.1, target_hz=10.0)
    task = TaskStream(SMNIST(mnist.train_images, mnist.train_labels, batch_size=args.batch_size), seed=0)
    test = list(SMNIST(mnist.test_images, mnist.test_labels, batch_size=500).batches())
    steps, elapsed = train(model, task, objective, torch.optim.Adam(model.parameters(), lr=0.01), args.seconds,
                           evaluate=evaluator(objective, test), every=args.eval_every, rewiring=rewiring)
    per_step = elapsed / steps
    print(f"smnist LSNN+DEEP R, batch {args.batch_size}, n_delay {args.n_delay}, {mnist.source}: {steps} steps "
          f"in {elapsed:.0f} s = {per_step:.3f} s/step; 36000 steps would take {36000 * per_step / 3600:.1f} h")


def storerecall(args, device):
    torch.manual_seed(0)
    model = Network(ALIF(100, 10, 10, tau_a=1200.0, beta=1.7, thr=0.01, n_ref=3, n_delay=10, seed=0),
                    Readout(20, 2, tau_out=20.0, bias=False, seed=0)).to(device)
    objective = Objective(rate_weight=0.01, target_hz=10.0)
    task = TaskStream(store_recall, seed=0, batch_size=128)
    test = [TaskStream(store_recall, seed=3000, batch_size=128)(k) for k in range(16)]
    steps, elapsed = train(model, task, objective, torch.optim.Adam(model.parameters(), lr=0.01), args.seconds,
                           evaluate=evaluator(objective, test), every=25, steps=200)
    print(f"store-recall, batch 128: {steps} steps in {elapsed:.0f} s = {elapsed / steps:.3f} s/step")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0, help="time box of each run")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-delay", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--mnist-dir", default=None)
    parser.add_argument("--runs", default="storerecall,smnist")
    args = parser.parse_args()
    device = default_device()
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch "
          f"{torch.__version__}")
    for run in args.runs.split(","):
        {"smnist": smnist, "storerecall": storerecall}[run](args, device)


if __name__ == "__main__":
    main()
