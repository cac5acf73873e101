r"""Loss curvature: exact Hessian-vector products and the leading eigenvalues of the Hessian, never materialised.

The operator is kept apart from the algorithms. ``loss_fn(params) -> scalar`` takes a dict of tensors (e.g. a
sub-dict of a model's parameters, the rest held fixed inside ``loss_fn``);
:math:`Hv = \nabla_\theta \langle \nabla_\theta L(\theta), v \rangle` is computed forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad``) or by double backward. Lanczos with full reorthogonalisation finds the
largest *algebraic* eigenvalues; PyHessian's power iteration with deflation (largest *magnitude*) is here for
comparison. For spiking cells the Hessian is that of the surrogate gradient (the pseudo-derivative and its
derivative), not of the spiking network's true, piecewise-constant loss.
"""
from typing import NamedTuple

import torch
from torch.func import functional_call, grad, jvp

from . import fused
from .seeding import generator

METHODS = ("forward", "double_backward")


def _check_params(params):
    if not isinstance(params, dict) or not params:
        raise ValueError("params must be a non-empty dict of name -> tensor")
    for name, p in params.items():
        if not torch.is_tensor(p) or not p.is_floating_point():
            raise ValueError(f"params[{name!r}] must be a floating-point tensor")


def _check_vector(v, params):
    if not isinstance(v, dict) or set(v) != set(params):
        raise ValueError(f"v must be a dict with the keys of params {sorted(params)}, got "
                         f"{sorted(v) if isinstance(v, dict) else type(v).__name__}")
    for name, p in params.items():
        if not torch.is_tensor(v[name]) or v[name].shape != p.shape:
            raise ValueError(f"v[{name!r}] must be a tensor of shape {tuple(p.shape)}, got "
                             f"{tuple(v[name].shape) if torch.is_tensor(v[name]) else type(v[name]).__name__}")


def _finite(loss):
    if loss.dim() != 0 or not torch.isfinite(loss):
        raise ValueError(f"loss_fn must return a finite scalar, got {loss.detach()}")


def hvp(loss_fn, params, v, *, method="forward"):
    r""":math:`Hv` as a dict like ``params``. ``method="forward"``: ``jvp(grad(loss_fn))`` (forward-over-reverse);
    ``"double_backward"``: :math:`\nabla_\theta \langle \nabla_\theta L, v \rangle` by two backward passes.
    ``params`` is neither modified nor given ``.grad``; tensors with ``requires_grad=True`` are accepted."""
    _check_params(params)
    _check_vector(v, params)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    primals = {k: p.detach() for k, p in params.items()}
    tangents = {k: v[k].detach().to(p.dtype) for k, p in primals.items()}
    if method == "forward":
        def loss_and_value(p):
            loss = loss_fn(p)
            return loss, loss
        _, product, loss = jvp(grad(loss_and_value, has_aux=True), (primals,), (tangents,), has_aux=True)
        _finite(loss)
        return product
    leaves = {k: p.clone().requires_grad_() for k, p in primals.items()}
    with torch.enable_grad(), fused.disabled():  # CUDA graphs of the fused loop are differentiable once only
        loss = loss_fn(leaves)
        _finite(loss)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
        products = torch.autograd.grad(grads, list(leaves.values()), grad_outputs=list(tangents.values()),
                                       allow_unused=True)
    return {k: torch.zeros_like(p) if h is None else h for (k, p), h in zip(leaves.items(), products)}


class HessianOperator:
    """The Hessian of ``loss_fn`` at ``params`` as a linear map of flat vectors, ``matvec(x) = H x``;
    ``calls`` counts the Hessian-vector products."""

    def __init__(self, loss_fn, params, *, method="forward"):
        _check_params(params)
        self.loss_fn, self.method = loss_fn, method
        self.params = {k: p.detach() for k, p in params.items()}
        self.size = sum(p.numel() for p in self.params.values())
        self.dtype, self.device = next(iter(self.params.values())).dtype, next(iter(self.params.values())).device
        self.calls = 0

    def unflatten(self, x):
        out, i = {}, 0
        for k, p in self.params.items():
            out[k] = x[i:i + p.numel()].view_as(p)
            i += p.numel()
        return out

    def matvec(self, x):
        self.calls += 1
        product = hvp(self.loss_fn, self.params, self.unflatten(x), method=self.method)
        return torch.cat([product[k].reshape(-1) for k in self.params])


def dense_hessian(loss_fn, params):
    """The full Hessian ``(d, d)`` over the flattened ``params`` (their dict order): for small networks only."""
    op = HessianOperator(loss_fn, params)

    def flat_loss(x):
        return loss_fn(op.unflatten(x))
    flat = torch.cat([p.reshape(-1) for p in op.params.values()])
    with torch.enable_grad():
        return torch.autograd.functional.hessian(flat_loss, flat)


def _random_unit(op, seed, index=0):
    x = torch.randn(op.size, generator=generator(seed, "hessian-start", index), dtype=torch.float64)
    return (x / x.norm()).to(op.device, op.dtype)


class Eigen(NamedTuple):
    values: torch.Tensor  # (k,) sorted descending
    vectors: torch.Tensor  # (d, k) unit columns, or None
    calls: int  # Hessian-vector products used


def lanczos(op, k, *, tol=1e-6, max_iter=100, seed=0, largest_magnitude=False):
    r"""Lanczos with full reorthogonalisation: Krylov basis :math:`Q_m`, tridiagonal :math:`T_m = Q_m^T H Q_m`,
    Ritz pairs :math:`(\theta_i, Q_m s_i)`. Stops when the wanted Ritz values have residuals
    :math:`|\beta_m s_{m,i}| \le tol \cdot \max(|\theta_i|, 10^{-12})`, the space is exhausted, or after
    ``max_iter`` steps."""
    q = _random_unit(op, seed)
    basis, alphas, betas = [q], [], []
    for m in range(1, min(max_iter, op.size) + 1):
        w = op.matvec(basis[-1])
        alphas.append(torch.dot(w, basis[-1]))
        Q = torch.stack(basis, 1)
        for _ in range(2):  # full reorthogonalisation, twice for safety
            w = w - Q @ (Q.T @ w)
        beta = w.norm()
        values, vectors, wanted = _ritz(alphas, betas, k, largest_magnitude)
        residual = (beta * vectors[-1, wanted]).abs()
        done = m >= k and bool((residual <= tol * values[wanted].abs().clamp(min=1e-12)).all())
        if done or m == op.size or beta <= 1e-12 * max(1.0, float(values.abs().max())):
            break
        betas.append(beta)
        basis.append(w / beta)
    Q = torch.stack(basis[:len(alphas)], 1)
    return values[wanted], Q @ vectors[:, wanted], op.calls


def _ritz(alphas, betas, k, largest_magnitude):
    """Eigenpairs of the tridiagonal matrix and the indices of the ``k`` wanted ones, in the order reported."""
    T = torch.diag(torch.stack(alphas).double())
    if betas:
        off = torch.stack(betas).double()
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(T)
    key = values.abs() if largest_magnitude else values
    wanted = torch.argsort(key, descending=True)[:k]
    dtype = alphas[0].dtype
    return values.to(dtype), vectors.to(dtype), wanted


def power_iteration(op, k, *, tol=1e-6, max_iter=100, seed=0):
    r"""PyHessian's power iteration with deflation: for each of ``k`` eigenvalues, repeat
    :math:`v \leftarrow Hv / \|Hv\|` (orthogonal to those found) until :math:`\lambda = v^T H v` changes by less
    than ``tol`` relative. Finds the eigenvalues of largest *magnitude*, with their signs."""
    values, vectors = [], []
    for i in range(k):
        v = _random_unit(op, seed, i)
        value = None
        for _ in range(max_iter):
            for u in vectors:
                v = v - torch.dot(u, v) * u
            v = v / v.norm()
            hv = op.matvec(v)
            new = torch.dot(hv, v)
            v = hv / hv.norm()
            if value is not None and abs(new - value) / (abs(value) + 1e-6) < tol:
                value = new
                break
            value = new
        values.append(value)
        vectors.append(v)
    return torch.stack(values), torch.stack(vectors, 1), op.calls


def top_eigenvalues(loss_fn, params, k=1, *, method="lanczos", **options):
    r"""The ``k`` largest **algebraic** eigenvalues of the Hessian of ``loss_fn`` at ``params``, descending.

    ``method``: ``"lanczos"`` (default), ``"power"`` (PyHessian's, largest magnitude) or ``"dense"`` (small nets).
    ``options``: ``tol`` (1e-6), ``max_iter`` (100), ``seed`` (0: the start vector's stream),
    ``largest_magnitude`` (False; True gives the magnitudes :math:`|\lambda|` of the ``k`` eigenvalues largest in
    magnitude, what the original BiolHessRNN power iteration reports), ``eigenvectors`` (False: return
    :class:`Eigen` with the unit eigenvectors as columns), ``hvp`` (``"forward"`` or ``"double_backward"``).
    """
    unknown = set(options) - {"tol", "max_iter", "seed", "largest_magnitude", "eigenvectors", "hvp"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; options: tol, max_iter, seed, largest_magnitude, "
                         f"eigenvectors, hvp")
    op = HessianOperator(loss_fn, params, method=options.get("hvp", "forward"))
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= op.size:
        raise ValueError(f"k must be an integer between 1 and the number of selected parameters ({op.size}), "
                         f"got {k!r}")
    magnitude = options.get("largest_magnitude", False)
    settings = dict(tol=options.get("tol", 1e-6), max_iter=options.get("max_iter", 100), seed=options.get("seed", 0))
    if method == "lanczos":
        values, vectors, calls = lanczos(op, k, largest_magnitude=magnitude, **settings)
    elif method == "power":
        values, vectors, calls = power_iteration(op, k, **settings)
    elif method == "dense":
        all_values, all_vectors = torch.linalg.eigh(dense_hessian(loss_fn, params))
        wanted = torch.argsort(all_values.abs() if magnitude else all_values, descending=True)[:k]
        values, vectors, calls = all_values[wanted], all_vectors[:, wanted], 0
    else:
        raise ValueError(f"method must be 'lanczos', 'power' or 'dense', got {method!r}")
    if magnitude:
        values = values.abs()
    if options.get("eigenvectors", False):
        return Eigen(values, vectors, calls)
    return values


def model_loss(model, loss, *, names):
    """``(loss_fn, params)`` for the Hessian over the parameters ``names`` of ``model``, the others held at their
    current values: ``loss(run, weights)`` receives ``run(*args) = functional_call(model, weights, args)`` and
    ``weights``, every parameter by name (for weight penalties)."""
    every = dict(model.named_parameters())
    missing = [n for n in names if n not in every]
    if not names or missing:
        raise ValueError(f"names must be a non-empty list of parameter names of the model; unknown: {missing}; "
                         f"parameters: {sorted(every)}")
    fixed = {k: p.detach() for k, p in every.items() if k not in names}

    def loss_fn(params):
        weights = {**fixed, **params}
        return loss(lambda *args, **kwargs: functional_call(model, weights, args, kwargs), weights)
    return loss_fn, {n: every[n].detach() for n in names}

