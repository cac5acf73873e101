"""Leading Hessian eigenvalue: rnnnotes' Lanczos against PyHessian's power iteration, side by side in one run.

The BiolHessRNN network (128 ReLU units, row-wise MNIST, Hessian w.r.t. W_rec of the cross-entropy on 256
held-out digits), after a few SGD steps. Prints the number of Hessian-vector products (HVPs) and the wall time each
method needs to get the top eigenvalue within 1e-3 of a tight reference, the HVPs each uses when left to its own
stopping rule at tol 1e-3 (and the error of what it returns), for the top eigenvalue and for the top 5 (`--top`),
and the cost of one HVP (forward-over-reverse, double backward, and double backward through a gradient graph kept
from one product to the next, as Lanczos does) relative to one gradient:
    python benchmarks/bench_hessian.py
Needs `pyhessian` (in requirements.txt). PyHessian's loss has no access to the weights, so both sides use the
cross-entropy alone (no L2 term), and its power iteration finds the largest |eigenvalue|, so rnnnotes is asked for
the largest magnitude too.
"""
import argparse
import statistics
import sys
import time
import warnings

import pyhessian
import torch

from rnnnotes import hessian, numerics
from rnnnotes.rate_experiments import RowMNISTCurvature
from rnnnotes.train import fit
from timing import median_times, row


def network(args):
    config = RowMNISTCurvature(n_hidden=args.hidden, n_iterations=args.train_steps, batch_size=256,
                               eval_every=0, n_hessian=args.samples)
    training = config.build("cpu")
    fit(training._replace(evaluate=None))
    return training.model, config.held_out()


def lanczos_to_accuracy(loss_fn, params, reference, accuracy, method, seed):
    """The smallest Lanczos iteration count whose estimate is within ``accuracy`` (relative), and its time."""
    for m in range(1, 200):
        start = time.perf_counter()
        with warnings.catch_warnings():  # tol=0: every run stops at max_iter, by design
            warnings.simplefilter("ignore", hessian.NotConvergedWarning)
            result = hessian.top_eigenvalues(loss_fn, params, 1, largest_magnitude=True, tol=0.0, max_iter=m,
                                             eigenvectors=True, hvp=method, seed=seed)
        elapsed = time.perf_counter() - start
        if abs(result.values.item() - reference) <= accuracy * abs(reference):
            return result.calls, elapsed
    raise RuntimeError("Lanczos did not reach the accuracy in 200 iterations")


def pyhessian_run(model, batch, max_iter, tol, seed, top=1):
    """PyHessian's own power iteration for its ``top`` eigenvalues with every HVP's estimate ``<v, Hv>`` recorded:
    ``(estimates, seconds from the start to each HVP, the eigenvalues it returns)``."""
    class LastStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x).out[-1]

    pyhessian_module = sys.modules["pyhessian.hessian"]  # the module; ``pyhessian.hessian`` is its class
    estimates, stamps = [], []
    original = pyhessian_module.hessian_vector_product

    def counted(gradsH, params, v):
        product = original(gradsH, params, v)
        estimates.append(sum((a * b).sum() for a, b in zip(product, v)).item())
        stamps.append(time.perf_counter())
        return product

    for name, p in model.named_parameters():
        p.requires_grad_(name == "cell.w_rec")
    torch.manual_seed(seed)  # PyHessian's start vector
    start = time.perf_counter()
    pyhessian_module.hessian_vector_product = counted
    try:
        engine = pyhessian.hessian(LastStep(), torch.nn.functional.cross_entropy,
                                   data=(batch.x, batch.y[-1]), cuda=False)
        values = engine.eigenvalues(maxIter=max_iter, tol=tol, top_n=top)[0]
    finally:
        pyhessian_module.hessian_vector_product = original
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
    return estimates, [t - start for t in stamps], values


def pyhessian_to_accuracy(model, batch, reference, accuracy, max_iter, seed):
    """PyHessian's power iteration run for ``max_iter`` steps (tol 0); the HVPs and the time until its estimate
    first comes within ``accuracy``."""
    estimates, seconds, _ = pyhessian_run(model, batch, max_iter, 0.0, seed)
    for i, value in enumerate(estimates):
        if abs(abs(value) - reference) <= accuracy * abs(reference):
            return i + 1, seconds[i]
    raise RuntimeError(f"PyHessian did not reach the accuracy in {max_iter} iterations")


def own_stopping_rules(model, batch, loss_fn, params, reference, tol, seed):
    """Each method left to its own stopping rule at ``tol`` for the ``len(reference)`` eigenvalues largest in
    magnitude: PyHessian's (each power iteration, deflated by the vectors found before it, stops when its estimate
    changes by less than ``tol`` relative, 100 iterations at most, its defaults) and rnnnotes' Lanczos (every Ritz
    residual below ``tol`` times its value). ``{method: (HVPs, largest relative error of the values returned)}``."""
    top = len(reference)
    estimates, _, values = pyhessian_run(model, batch, 100, tol, seed, top)
    ours = hessian.top_eigenvalues(loss_fn, params, top, largest_magnitude=True, tol=tol, max_iter=300,
                                   eigenvectors=True, hvp="double_backward", seed=seed)

    def error(found):
        found = torch.as_tensor(found, dtype=torch.float64).abs().sort(descending=True).values
        return ((found - reference) / reference).abs().max().item()
    return {"PyHessian": (len(estimates), error(values)), "Lanczos": (ours.calls, error(ours.values))}


def options(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--samples", type=int, default=256, help="held-out digits of the evaluation set")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--accuracy", type=float, default=1e-3)
    parser.add_argument("--power-iterations", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5, help="timings of one HVP and one gradient (median)")
    parser.add_argument("--seeds", type=int, default=5, help="start vectors per method (counts are averaged)")
    parser.add_argument("--top", type=int, default=5, help="also compare the stopping rules for this many "
                        "eigenvalues (largest in magnitude)")
    return parser.parse_args(argv)


def measure(args):
    """The reference eigenvalue; (HVPs, seconds) to ``args.accuracy`` for each start vector of PyHessian and of
    each of rnnnotes' HVP methods; HVPs and errors under each method's own stopping rule for the top 1 and the top
    ``args.top``; seconds of one gradient and of one HVP by each method."""
    with numerics.flush_denormal():
        model, batch = network(args)

        def loss(run, weights):
            return torch.nn.functional.cross_entropy(run(batch.x).out[-1], batch.y[-1])
        loss_fn, params = hessian.model_loss(model, loss, names=["cell.w_rec"])
        tight = hessian.top_eigenvalues(loss_fn, params, args.top, largest_magnitude=True, tol=1e-10,
                                        max_iter=300).double()
        references = {1: tight[:1], args.top: tight}
        reference = references[1].item()
        seeds = range(args.seeds)
        theirs = [pyhessian_to_accuracy(model, batch, reference, args.accuracy, args.power_iterations, s)
                  for s in seeds]
        ours = {method: [lanczos_to_accuracy(loss_fn, params, reference, args.accuracy, method, s) for s in seeds]
                for method in hessian.METHODS}
        own = {top: [own_stopping_rules(model, batch, loss_fn, params, values, args.accuracy, s) for s in seeds]
               for top, values in references.items()}
        gradient, hvp = costs(loss_fn, params, args.repeats)
    return dict(reference=reference, theirs=theirs, ours=ours, own=own, gradient=gradient, hvp=hvp)


KEPT = "double_backward, graph kept (Lanczos)"


def costs(loss_fn, params, repeats):
    """Seconds of one gradient (the faster of ``torch.func.grad`` and ``torch.autograd.grad``, which runs the
    fused loop) and ``{way: seconds}`` of one HVP: ``hessian.hvp`` by each method, and a product of the
    double-backward operator Lanczos uses once its gradient graph is built (interleaved medians)."""
    v = {k: torch.randn_like(p) for k, p in params.items()}
    leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
    operator = hessian.HessianOperator(loss_fn, params, method="double_backward")
    x = torch.cat([t.reshape(-1) for t in v.values()])
    operator.matvec(x)  # builds the gradient's graph
    times = median_times({
        "func.grad": lambda: torch.func.grad(loss_fn)(params),
        "autograd.grad": lambda: torch.autograd.grad(loss_fn(leaves), list(leaves.values())),
        **{method: lambda method=method: hessian.hvp(loss_fn, params, v, method=method)
           for method in hessian.METHODS},
        KEPT: lambda: operator.matvec(x)}, repeats)
    gradient = min(times.pop("func.grad"), times.pop("autograd.grad"))
    return gradient, times


def means(runs):
    """Mean HVP count and mean seconds over start vectors."""
    return tuple(statistics.mean(column) for column in zip(*runs))


def report(args, m):
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.hidden} units, {args.samples} "
          f"digits, Hessian w.r.t. W_rec ({args.hidden ** 2} weights); reference |lambda|max {m['reference']:.6g}")
    theirs_calls, theirs_time = means(m["theirs"])
    print(f"to {args.accuracy:g} relative, mean over {args.seeds} start vectors: PyHessian power iteration "
          f"{theirs_calls:.1f} HVPs ({', '.join(str(c) for c, _ in m['theirs'])}) in {theirs_time:.2f} s")
    for method, ours in m["ours"].items():
        calls, seconds = means(ours)
        print(f"  rnnnotes Lanczos, {method} HVPs: {calls:.1f} HVPs ({', '.join(str(c) for c, _ in ours)}) "
              f"in {seconds:.2f} s; ratio to PyHessian: HVPs {calls / theirs_calls:.2f}, "
              f"time {seconds / theirs_time:.2f}")
    for top, runs in m["own"].items():
        for method in ("PyHessian", "Lanczos"):
            calls, errors = zip(*(run[method] for run in runs))
            print(f"  top {top}, left to its own stopping rule at tol {args.accuracy:g}, {method}: "
                  f"{statistics.mean(calls):.1f} HVPs ({', '.join(str(c) for c in calls)}), largest relative error "
                  f"per run: mean {statistics.mean(errors):.1e}, largest {max(errors):.1e}")
    print(f"one gradient {m['gradient'] * 1e3:.1f} ms; " + ", ".join(
        f"one HVP {method} {t * 1e3:.1f} ms ({t / m['gradient']:.2f}x)" for method, t in m["hvp"].items()))


def rows(args, m):
    """Time to the top eigenvalue: rnnnotes' Lanczos (each HVP method) against PyHessian's power iteration."""
    theirs_calls, theirs_time = means(m["theirs"])
    own, top = ({method: statistics.mean(run[method][0] for run in m["own"][n]) for method in ("PyHessian", "Lanczos")}
                for n in (1, args.top))
    setting = f"{args.hidden} units, {args.train_steps} SGD steps, to {args.accuracy:g}, {args.seeds} start vectors"
    out = []
    for method, ours in m["ours"].items():
        calls, seconds = means(ours)
        note = (f"HVPs {calls:.1f} vs {theirs_calls:.1f} (own stopping rules: {own['Lanczos']:.1f} vs "
                f"{own['PyHessian']:.1f}; top {args.top}: {top['Lanczos']:.1f} vs {top['PyHessian']:.1f}); one HVP "
                f"{m['hvp'][method] / m['gradient']:.1f}x a gradient")
        if method == "double_backward":
            note += f", {m['hvp'][KEPT] / m['gradient']:.1f}x with the gradient's graph kept (in Lanczos)"
        out.append(row(f"Hessian top eigenvalue: Lanczos ({method}) vs PyHessian", setting, "cpu", seconds,
                       theirs_time, note))
    return out


def run(quick=False):
    """Comparison rows at the script's defaults (``quick``: 5 SGD steps, 2 start vectors, 40 power iterations,
    top 2)."""
    quick_options = ["--train-steps", "5", "--seeds", "2", "--repeats", "3", "--power-iterations", "40", "--top", "2"]
    args = options(quick_options if quick else [])
    return rows(args, measure(args))


def main():
    args = options()
    report(args, measure(args))


if __name__ == "__main__":
    main()
