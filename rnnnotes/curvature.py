r"""The leading Hessian eigenvalue of a trained network's loss, on a fixed evaluation set (BiolHessRNN's measure).

The loss is the training objective (task loss, rate and L2 penalties) of the *rule-free* network: the gradient
approximations of e-prop, MDGL and ModProp act in training only, never here. The Hessian is taken with respect to
the parameters ``names`` (BiolHessRNN: the recurrent weights) and never materialised (:mod:`rnnnotes.hessian`).
"""
import pandas as pd
import torch

from . import hessian
from .checks import require_count
from .seeding import generator
from .train import to_device


def hessian_loss(model, objective, batch, *, names=("cell.w_rec",)):
    """``(loss_fn, params)``: ``objective``'s loss of ``model`` on ``batch`` as a function of the parameters
    ``names`` (see :func:`rnnnotes.hessian.model_loss`)."""
    batch = to_device(batch, next(model.parameters()).device)

    def loss(run, weights):
        return objective.loss(run(batch.x), batch, weights)[0]
    return hessian.model_loss(model, loss, names=list(names))


def top_curvature(model, objective, batch, *, names=("cell.w_rec",), tol=1e-4, max_iter=80):
    r"""``{"lambda_max": ..., "lambda_abs_max": ..., "hvp_calls": ...}``: the largest algebraic eigenvalue and the
    largest magnitude :math:`|\lambda|` (what BiolHessRNN's power iteration reports) by Lanczos, and the number of
    Hessian-vector products both took. The products are double-backward ones, which through a rate layer's fused
    loop differentiate its hand-written adjoint (:class:`rnnnotes.fused_rate.RateBackward`); they cost less than
    forward-over-reverse here (``benchmarks/bench_hessian.py``)."""
    loss_fn, params = hessian_loss(model, objective, batch, names=names)
    options = dict(tol=tol, max_iter=max_iter, eigenvectors=True, hvp="double_backward")
    with torch.enable_grad():
        top = hessian.top_eigenvalues(loss_fn, params, 1, **options)
        magnitude = hessian.top_eigenvalues(loss_fn, params, 1, largest_magnitude=True, **options)
    return {"lambda_max": top.values.item(), "lambda_abs_max": magnitude.values.item(),
            "hvp_calls": top.calls + magnitude.calls}


def curvature_evaluator(objective, batch, *, names=("cell.w_rec",), tol=1e-4, max_iter=80):
    """``evaluate(model)`` for :func:`rnnnotes.train.fit`: the objective's metrics on ``batch`` and
    :func:`top_curvature` there, so every evaluation stores its eigenvalues with the run's metrics."""
    def evaluate(model):
        metrics = objective(model, to_device(batch, next(model.parameters()).device))[1]
        return {**metrics, **top_curvature(model, objective, batch, names=names, tol=tol, max_iter=max_iter)}
    return evaluate


def samples_sweep(model, objective, make_batch, sizes, *, draws=3, seed=0):
    """How the top eigenvalue depends on the evaluation set: for each size in ``sizes``, ``draws`` batches
    ``make_batch(size, generator)`` of that many examples, each drawn from the stream
    ``(seed, "hessian-samples", size, draw)``."""
    require_count(draws=draws)
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f"sizes must be a non-empty list of positive integers, got {sizes!r}")
    rows = []
    for size in sizes:
        for draw in range(draws):
            batch = make_batch(size, generator(seed, "hessian-samples", size, draw))
            rows.append({"samples": size, "draw": draw, **top_curvature(model, objective, batch)})
    return pd.DataFrame(rows)
