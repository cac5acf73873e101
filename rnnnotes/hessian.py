r"""Loss curvature: exact Hessian-vector products and the leading eigenvalues of the Hessian, never materialised.

The operator is kept apart from the algorithms. ``loss_fn(params) -> scalar`` takes a dict of tensors (e.g. a
sub-dict of a model's parameters, the rest held fixed inside ``loss_fn``);
:math:`Hv = \nabla_\theta \langle \nabla_\theta L(\theta), v \rangle` is computed forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad``) or by double backward. Lanczos with full reorthogonalisation finds the
largest *algebraic* eigenvalues; PyHessian's power iteration with deflation (largest *magnitude*) is here for
comparison, and finds the largest algebraic ones on the shifted operator :math:`H + |\lambda|_{max} I`. For
spiking cells the Hessian is that of the surrogate gradient (the pseudo-derivative and its derivative), not of the
spiking network's true, piecewise-constant loss.
"""
import warnings
from typing import NamedTuple

import torch
from torch.func import functional_call, grad, jvp

from . import fused
from .checks import require_bool, require_nonnegative
from .seeding import generator

METHODS = ("forward", "double_backward")


class NotConvergedWarning(RuntimeWarning):
    """An iterative eigensolver used ``max_iter`` steps before its estimates met ``tol``."""


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
        if not bool(torch.isfinite(v[name]).all()):
            raise ValueError(f"v[{name!r}] must be finite")


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
            if not torch.is_tensor(loss) or loss.dim() != 0:
                raise ValueError(f"loss_fn must return a finite scalar, got shape {tuple(getattr(loss, 'shape', ()))}")
            return loss, loss
        _, product, loss = jvp(grad(loss_and_value, has_aux=True), (primals,), (tangents,), has_aux=True)
        _finite(loss)
        return product
    leaves, grads = _gradient_graph(loss_fn, primals)
    return dict(zip(primals, _backward_product(leaves, grads, list(tangents.values()), keep=False)))


def _gradient_graph(loss_fn, primals):
    """``(leaves, grads)``: fresh leaves holding ``primals`` and the gradient of ``loss_fn`` at them, with its graph
    (CUDA graphs of the fused loops are switched off: they are differentiable once only)."""
    leaves = [p.clone().requires_grad_() for p in primals.values()]
    with torch.enable_grad(), fused.without_graphs():
        loss = loss_fn(dict(zip(primals, leaves)))
        _finite(loss)
        return leaves, torch.autograd.grad(loss, leaves, create_graph=True)


def _backward_product(leaves, grads, tangents, *, keep):
    r""":math:`\nabla_\theta \langle g, v \rangle` for the gradients ``grads`` of :func:`_gradient_graph` and
    ``tangents`` ``v`` (a list like ``leaves``), one backward pass through the gradient's graph (``keep``: kept for
    the next product). A gradient that does not depend on the parameters contributes zeros."""
    linked = [i for i, g in enumerate(grads) if g.requires_grad]
    products = [torch.zeros_like(p) for p in leaves]
    if linked:
        found = torch.autograd.grad([grads[i] for i in linked], leaves, [tangents[i] for i in linked],
                                    retain_graph=keep, allow_unused=True)
        products = [p if h is None else h for p, h in zip(products, found)]
    return products


class HessianOperator:
    """The Hessian of ``loss_fn`` at ``params`` as a linear map of flat vectors, ``matvec(x) = H x``;
    ``calls`` counts the Hessian-vector products. With ``method="double_backward"`` the gradient and its graph are
    built at the first product and kept: each product is then one backward pass through them (PyHessian's way),
    for the memory of that graph while the operator lives."""

    def __init__(self, loss_fn, params, *, method="forward"):
        _check_params(params)
        self.loss_fn, self.method = loss_fn, method
        self.params = {k: p.detach() for k, p in params.items()}
        self.size = sum(p.numel() for p in self.params.values())
        self.dtype, self.device = next(iter(self.params.values())).dtype, next(iter(self.params.values())).device
        self.calls = 0
        self._gradient = None

    def unflatten(self, x):
        out, i = {}, 0
        for k, p in self.params.items():
            out[k] = x[i:i + p.numel()].view_as(p)
            i += p.numel()
        return out

    def matvec(self, x):
        self.calls += 1
        if self.method == "forward":
            product = hvp(self.loss_fn, self.params, self.unflatten(x), method=self.method)
            return torch.cat([product[k].reshape(-1) for k in self.params])
        if self._gradient is None:
            self._gradient = _gradient_graph(self.loss_fn, self.params)
        tangents = [t.to(p.dtype) for t, p in zip(self.unflatten(x).values(), self.params.values())]
        return torch.cat([h.reshape(-1) for h in _backward_product(*self._gradient, tangents, keep=True)])


def dense_hessian(loss_fn, params):
    """The full Hessian ``(d, d)`` over the flattened ``params`` (their dict order): for small networks only."""
    op = HessianOperator(loss_fn, params)

    def flat_loss(x):
        return loss_fn(op.unflatten(x))
    flat = torch.cat([p.reshape(-1) for p in op.params.values()])
    with torch.no_grad():
        _finite(flat_loss(flat))
    with torch.enable_grad():
        return torch.autograd.functional.hessian(flat_loss, flat)


def _random_unit(op, seed, index=0, stream="hessian-start", exclude=None):
    """A random unit vector from the stream ``(seed, stream, index)``, orthogonal to the columns of ``exclude``."""
    x = torch.randn(op.size, generator=generator(seed, stream, index), dtype=torch.float64).to(op.device, op.dtype)
    if exclude is not None:
        x = _orthogonal(x, exclude)
    return x / x.norm()


class Eigen(NamedTuple):
    values: torch.Tensor  # (k,) sorted descending
    vectors: torch.Tensor  # (d, k) unit columns, or None
    calls: int  # Hessian-vector products used


def lanczos(op, k, *, tol=1e-6, max_iter=100, seed=0, largest_magnitude=False, exclude=None, stream="hessian-start"):
    r"""Lanczos with full reorthogonalisation: Krylov basis :math:`Q_m`, tridiagonal :math:`T_m = Q_m^T H Q_m`,
    Ritz pairs :math:`(\theta_i, Q_m s_i)`. Stops when the wanted Ritz values have residuals
    :math:`|\beta_m s_{m,i}| \le tol \cdot \max(|\theta_i|, 10^{-12})`, after ``op.size`` steps (exact), or after
    ``max_iter`` steps (with a :class:`NotConvergedWarning`). A Krylov space exhausted earlier (:math:`\beta_m = 0`:
    an invariant subspace, e.g. of repeated eigenvalues such as the zeros of a masked diagonal) is continued from a
    new random vector orthogonal to it, :math:`T_m` becoming block tridiagonal; after such a restart the new block's
    extreme Ritz values must converge too (they start inside the spectrum and may still outgrow the wanted ones).
    With ``exclude`` (orthonormal columns :math:`Y`) the Krylov space is kept orthogonal to them: Lanczos on the
    deflated operator :math:`(I - Y Y^T) H (I - Y Y^T)` restricted to their complement. A Krylov space that is not
    exhausted holds one direction of each eigenspace, so a repeated eigenvalue appears once:
    :func:`lanczos_checked` finds the further copies."""
    excluded = 0 if exclude is None else exclude.shape[1]
    q = _random_unit(op, seed, 0, stream, exclude)
    basis, alphas, betas, restarts, start = [q], [], [], 0, 0
    steps = min(max_iter, op.size - excluded)
    for m in range(1, steps + 1):
        w = op.matvec(basis[-1])
        alphas.append(torch.dot(w, basis[-1]))
        Q = torch.stack(basis, 1) if exclude is None else torch.cat([exclude, torch.stack(basis, 1)], 1)
        w = _orthogonal(w, Q)
        beta = w.norm()
        values, vectors, wanted = _ritz(alphas, betas, k, largest_magnitude)
        exhausted = bool(beta <= 1e-12 * max(1.0, float(values.abs().max())))
        residual = (beta * vectors[-1, wanted]).abs()
        converged = (m >= k and not exhausted and _small(residual, values[wanted], tol)
                     and (start == 0 or _block_settled(alphas[start:], betas[start:], beta, tol, largest_magnitude)))
        if converged or m == op.size - excluded:
            break
        if m == steps:
            warnings.warn(f"Lanczos: the {k} wanted Ritz values did not reach tol={tol:g} in max_iter={max_iter} "
                          f"steps (largest relative residual {float((residual / values[wanted].abs()).max()):.2g})",
                          NotConvergedWarning, stacklevel=3)
            break
        if exhausted:  # continue from a new direction: T_m gets a zero off-diagonal entry
            restarts += 1
            w, beta, start = _random_unit(op, seed, restarts, stream, Q), torch.zeros((), dtype=beta.dtype), m
            basis.append(w)
        else:
            basis.append(w / beta)
        betas.append(beta)
    Q = torch.stack(basis[:len(alphas)], 1)
    return values[wanted], Q @ vectors[:, wanted], op.calls


def lanczos_checked(op, k, *, tol=1e-6, largest_magnitude=False, **settings):
    r""":func:`lanczos`, then, for ``k > 1``, a check for the copies of repeated eigenvalues its Krylov space could
    not hold: Lanczos on the complement of the ``k`` Ritz vectors found (the deflated operator) for its leading
    eigenvalue :math:`\mu`. If :math:`\mu` exceeds the ``k``-th value found (in magnitude, with
    ``largest_magnitude``) by more than ``tol`` relative, it replaces that value and the check is repeated, at most
    ``k`` times. Each check costs one more Lanczos run (``max_iter`` steps at most)."""
    values, vectors, calls = lanczos(op, k, tol=tol, largest_magnitude=largest_magnitude, **settings)
    key = torch.abs if largest_magnitude else (lambda x: x)
    for check in range(k if 1 < k < op.size else 0):
        extra, vector, calls = lanczos(op, 1, tol=tol, largest_magnitude=largest_magnitude, exclude=vectors,
                                       stream=f"hessian-check-{check}", **settings)
        weakest = int(torch.argmin(key(values)))
        if not key(extra[0]) > key(values[weakest]) + tol * values[weakest].abs():
            break
        values, vectors = values.clone(), vectors.clone()
        values[weakest], vectors[:, weakest] = extra[0], vector[:, 0]
    return values, vectors, calls


def _small(residual, values, tol):
    """Whether every residual is at most ``tol`` relative to its Ritz value."""
    return bool((residual <= tol * values.abs().clamp(min=1e-12)).all())


def _block_settled(alphas, betas, beta, tol, largest_magnitude):
    """Whether the last Lanczos block's largest Ritz value (and smallest, for ``largest_magnitude``) converged."""
    values, vectors, _ = _ritz(alphas, betas, 0, False)  # ascending
    ends = [0, -1] if largest_magnitude else [-1]
    return _small((beta * vectors[-1, ends]).abs(), values[ends], tol)


def _orthogonal(w, Q):
    """``w`` with its components along the orthonormal columns of ``Q`` removed (twice, for safety)."""
    for _ in range(2):
        w = w - Q @ (Q.T @ w)
    return w


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
    than ``tol`` relative (else a :class:`NotConvergedWarning` after ``max_iter``). Finds the eigenvalues of
    largest *magnitude*, with their signs, in the order found. One condition PyHessian lacks: :math:`v` must also
    be an eigenvector to within ``tol``, :math:`|v^T H v| \ge (1 - tol) \|Hv\|`; without it an iterate that
    alternates between the eigenvectors of :math:`\pm\lambda` (whose estimate does not change) stops at a value
    that is no eigenvalue."""
    values, vectors = [], []
    for i in range(k):
        v = _random_unit(op, seed, i)
        value = None
        for _ in range(max_iter):
            for u in vectors:
                v = v - torch.dot(u, v) * u
            v = v / v.norm()
            hv = op.matvec(v)
            new, norm = torch.dot(hv, v), hv.norm()
            v = hv / norm
            if value is not None and abs(new - value) / (abs(value) + 1e-6) < tol and abs(new) >= (1 - tol) * norm:
                value = new
                break
            value = new
        else:
            warnings.warn(f"power iteration: eigenvalue {i + 1} did not settle to tol={tol:g} in "
                          f"max_iter={max_iter} steps", NotConvergedWarning, stacklevel=3)
        values.append(value)
        vectors.append(v)
    return torch.stack(values), torch.stack(vectors, 1), op.calls


class _Shifted:
    """The operator :math:`H + s I` (same counter of Hessian-vector products as ``op``)."""

    def __init__(self, op, shift):
        self.op, self.shift = op, shift
        self.size, self.dtype, self.device = op.size, op.dtype, op.device

    @property
    def calls(self):
        return self.op.calls

    def matvec(self, x):
        return self.op.matvec(x) + self.shift * x


def _power_algebraic(op, k, **settings):
    r"""The ``k`` largest algebraic eigenpairs by power iteration: after the dominant eigenvalue :math:`\lambda_d`,
    on :math:`H + |\lambda_d| I`, whose spectrum lies in :math:`[0, 2|\lambda_d|]` with the same order."""
    values, vectors, calls = power_iteration(op, 1, **settings)
    if k == 1 and values[0] >= 0:
        return values, vectors, calls
    shift = values[0].abs()
    values, vectors, calls = power_iteration(_Shifted(op, shift), k, **settings)
    return values - shift, vectors, calls


def top_eigenvalues(loss_fn, params, k=1, *, method="lanczos", **options):
    r"""The ``k`` largest **algebraic** eigenvalues of the Hessian of ``loss_fn`` at ``params``, descending.

    ``method``: ``"lanczos"`` (default; for ``k > 1`` followed by the check for further copies of repeated
    eigenvalues of :func:`lanczos_checked`), ``"power"`` (PyHessian's power iteration with deflation; for the
    algebraic eigenvalues run on :math:`H + |\lambda|_{max} I`) or ``"dense"`` (small nets).
    ``options``: ``tol`` (1e-6), ``max_iter`` (100 per Lanczos run; at least ``k``), ``seed`` (0: the start vector's
    stream), ``largest_magnitude`` (False; True gives the magnitudes :math:`|\lambda|` of the ``k`` eigenvalues
    largest in magnitude, descending, what the original BiolHessRNN power iteration reports), ``eigenvectors``
    (False: return :class:`Eigen` with the unit eigenvectors as columns), ``hvp`` (``"double_backward"``,
    the default: after the first product each is one backward pass through the kept gradient graph, see
    :class:`HessianOperator`; or ``"forward"``). An iterative method that stops at ``max_iter`` warns
    (:class:`NotConvergedWarning`).
    """
    unknown = set(options) - {"tol", "max_iter", "seed", "largest_magnitude", "eigenvectors", "hvp"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; options: tol, max_iter, seed, largest_magnitude, "
                         f"eigenvectors, hvp")
    if method not in ("lanczos", "power", "dense"):
        raise ValueError(f"method must be 'lanczos', 'power' or 'dense', got {method!r}")
    if options.get("hvp", "double_backward") not in METHODS:
        raise ValueError(f"hvp must be one of {', '.join(METHODS)}, got {options['hvp']!r}")
    op = HessianOperator(loss_fn, params, method=options.get("hvp", "double_backward"))
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= op.size:
        raise ValueError(f"k must be an integer between 1 and the number of selected parameters ({op.size}), "
                         f"got {k!r}")
    settings = dict(tol=options.get("tol", 1e-6), max_iter=options.get("max_iter", 100), seed=options.get("seed", 0))
    _check_settings(k, method, settings["tol"], settings["max_iter"])
    magnitude, with_vectors = options.get("largest_magnitude", False), options.get("eigenvectors", False)
    require_bool(largest_magnitude=magnitude, eigenvectors=with_vectors)
    if method == "lanczos":
        values, vectors, calls = lanczos_checked(op, k, largest_magnitude=magnitude, **settings)
    elif method == "power":
        values, vectors, calls = (power_iteration if magnitude else _power_algebraic)(op, k, **settings)
    else:
        all_values, all_vectors = torch.linalg.eigh(dense_hessian(loss_fn, params))
        wanted = torch.argsort(all_values.abs() if magnitude else all_values, descending=True)[:k]
        values, vectors, calls = all_values[wanted], all_vectors[:, wanted], 0
    if magnitude:
        values = values.abs()
    order = torch.argsort(values, descending=True)
    values, vectors = values[order], vectors[:, order]
    if with_vectors:
        return Eigen(values, vectors, calls)
    return values


def _check_settings(k, method, tol, max_iter):
    require_nonnegative(tol=tol)
    least = k if method == "lanczos" else 1
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < least:
        raise ValueError(f"max_iter must be an integer >= {least}" + (" (k) for Lanczos" if least > 1 else "") +
                         f", got {max_iter!r}")


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

