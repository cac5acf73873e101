r"""Lyapunov exponents of a network's forward dynamics (QR method), and the flossing loss built on them.

For a map :math:`h_t = F(h_{t-1}, x_t)` with Jacobians :math:`D_t = \partial h_t / \partial h_{t-1}`, an
orthonormal :math:`Q_0 \in \mathbb{R}^{N \times k}` is pushed forward, :math:`\tilde Q = D_t Q_{t-1}`, and
re-orthonormalised by a thin QR every ``t_ons`` steps, :math:`Q_t R_t = \tilde Q`. The exponents are
:math:`\lambda_i = \frac{1}{T_{acc}} \sum \log |(R)_{ii}|` over the accumulated steps (natural log, per step); the
first ``k`` of them are the ``k`` largest of the spectrum. :math:`D_t Q` is a Jacobian-vector product of the step on
all ``k`` columns at once (``torch.func.jvp`` under ``vmap``, or the closed form a rate cell's state map carries),
so any cell's ``state_map()`` works, spiking cells through their pseudo-derivative (a *surrogate* spectrum).
Everything is differentiable: the flossing loss (Engelken 2023) backpropagates through the trajectory, the
Jacobian products and the QR into the weights.
"""
import torch
from torch.func import jvp, vmap

from .recurrent import StateMap
from .checks import require_integer, require_nonnegative, require_positive
from .seeding import generator


class SpectrumDivergedError(FloatingPointError, ValueError):
    """The tangent dynamics produced a non-finite value (an exploding or NaN trajectory)."""


def random_basis(n, k, *, seed=0, batch=1, dtype=torch.float32, device=None):
    """``(batch, n, k)`` orthonormal columns: the Q factor of the first ``k`` columns of an ``n x n`` Gaussian matrix
    from the stream ``(seed, "lyapunov-basis")``, so a smaller ``k`` spans the leading columns of a larger one
    (and gives exactly its first exponents); the same basis for every trajectory of the batch."""
    g = generator(seed, "lyapunov-basis")  # the first k columns of one n x n draw: nested in k
    q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)[:, :k], mode="reduced")[0]
    return q.to(device=device, dtype=dtype).expand(batch, n, k).clone()


def tangent_step(step_fn, h, x, Q):
    r"""``(h_t, D_t Q)``: one step of the map and its Jacobian applied to the ``k`` columns of ``Q (B, N, k)``,
    in one forward-mode pass batched over the columns; for a :class:`~rnnnotes.recurrent.StateMap` with a closed-form
    ``tangent``, that instead."""
    if isinstance(step_fn, StateMap):
        if step_fn.tangent is not None:
            return step_fn.tangent(h, x, Q)
        step_fn = step_fn.step

    def push(q):
        return jvp(lambda state: step_fn(state, x), (h,), (q,))
    return vmap(push, in_dims=2, out_dims=(None, 2))(Q)


def _batched(step_fn, h0, inputs):
    """One unbatched trajectory, ``h0 (N,)`` with ``inputs (T, ...)`` and ``step_fn`` on ``(N,)`` states, as a batch
    of one: ``(step_fn, h0 (1, N), inputs (T, 1, ...))``; batched arguments unchanged. A :class:`StateMap` is
    batched already, so only its arguments gain the batch dimension."""
    if not torch.is_tensor(h0) or h0.dim() != 1 or not torch.is_tensor(inputs):
        return step_fn, h0, inputs
    if not isinstance(step_fn, StateMap):
        user_step = step_fn

        def step_fn(h, x):
            return user_step(h[0], x[0]).unsqueeze(0)
    return step_fn, h0.unsqueeze(0), inputs.unsqueeze(1)


def _check(h0, inputs, k, t_ons, warmup):
    if not torch.is_tensor(h0) or h0.dim() != 2:
        raise ValueError(f"h0 must be a tensor of shape (B, N) or (N,), got {getattr(h0, 'shape', type(h0).__name__)}")
    if not torch.is_tensor(inputs) or inputs.dim() < 2 or inputs.shape[1] != h0.shape[0]:
        raise ValueError(f"inputs must be a tensor (T, B, ...) with B = {h0.shape[0]} (the batch of h0), got "
                         f"{tuple(inputs.shape) if torch.is_tensor(inputs) else type(inputs).__name__}")
    require_integer(k=k, t_ons=t_ons, warmup=warmup)
    if not 1 <= k <= h0.shape[1]:
        raise ValueError(f"k must be between 1 and N = {h0.shape[1]} (the state's width), got {k}")
    require_positive(t_ons=t_ons)
    require_nonnegative(warmup=warmup)
    if warmup >= inputs.shape[0]:
        raise ValueError(f"warmup must be below the number of steps T = {inputs.shape[0]}, got {warmup}")


def _blocks(T, t_ons, warmup):
    """The steps after which a QR is taken: every ``t_ons`` steps, at the end of the warm-up and at step T."""
    return sorted((set(range(t_ons, T + 1, t_ons)) | {warmup, T}) - {0})


def lyapunov_spectrum(step_fn, h0, inputs, k, *, t_ons=1, warmup=0, seed=0, per_trajectory=False):
    r"""The ``k`` largest Lyapunov exponents (per step, natural log) of ``h_t = step_fn(h_{t-1}, x_t)``, descending.

    ``step_fn``: a function ``(h, x) -> h``, or a cell's :class:`~rnnnotes.recurrent.StateMap`, whose closed-form
    ``tangent`` (rate cells) then replaces the batched Jacobian-vector products.

    ``h0 (B, N)`` starts ``B`` trajectories driven by ``inputs (T, B, ...)``; each gets its own tangent basis
    (the same start ``Q_0`` from ``seed``). Returns ``(k,)``: each trajectory's exponents sorted descending, then
    averaged over the ``B`` trajectories; ``per_trajectory=True`` returns them unaveraged, ``(B, k)``. One
    trajectory may also be given unbatched: ``h0 (N,)``, ``inputs (T, ...)`` and ``step_fn`` on ``(N,)`` states.
    A QR is taken every ``t_ons`` steps and also after step ``warmup`` and after the last step, so a ``T`` that is
    not a multiple of ``t_ons`` ends with a shorter block. The ``warmup`` leading steps are run (with QR) but not
    counted: the exponents are the summed :math:`\log|R_{ii}|` of the later blocks over ``T - warmup`` steps.
    A non-finite value raises :class:`SpectrumDivergedError` naming the steps (1-based) of the QR block where it
    appeared.
    """
    step_fn, h0, inputs = _batched(step_fn, h0, inputs)
    _check(h0, inputs, k, t_ons, warmup)
    T, B, N = inputs.shape[0], h0.shape[0], h0.shape[1]
    Q = random_basis(N, k, seed=seed, batch=B, dtype=h0.dtype, device=h0.device)
    h, logs, blocks, start = h0, [], [], 0
    for end in _blocks(T, t_ons, warmup):
        for t in range(start, end):
            h, Q = tangent_step(step_fn, h, inputs[t], Q)
        Q, R = torch.linalg.qr(Q, mode="reduced")
        logs.append(R.diagonal(dim1=-2, dim2=-1).abs().log())
        blocks.append((start + 1, end))
        start = end
    stacked = torch.stack(logs)  # (blocks, B, k)
    counted = torch.tensor([end > warmup for _, end in blocks], device=stacked.device)
    # a collapse (log 0) during the warm-up only leaves an arbitrary orthonormal basis to go on from
    finite = (torch.isfinite(stacked) | ~counted[:, None, None] & (stacked == -torch.inf)).flatten(1).all(1)
    if not bool(finite.all()):
        block = int((~finite).nonzero()[0])
        collapsed = bool((stacked[block] == -torch.inf).any()) and not bool(stacked[block].isnan().any())
        why = ("|R_ii| = 0: the tangent space collapsed (a Jacobian of rank < k, e.g. a spiking cell whose "
               "pseudo-derivative vanishes; try a smaller k)" if collapsed else
               "|R_ii| is inf or NaN: the trajectory or its tangents exploded")
        first, last = blocks[block]
        raise SpectrumDivergedError(f"the Lyapunov spectrum diverged at steps {first}..{last} (of {T}): {why}")
    exponents = stacked[counted].sum(0).sort(dim=-1, descending=True).values / (T - warmup)
    return exponents if per_trajectory else exponents.mean(0)


def flossing_loss(exponents, target=0.0, *, reduction="sum"):
    r"""Engelken's gradient-flossing loss over the ``k`` exponents: the paper's
    :math:`\sum_i (\lambda_i - \lambda^*)^2` (``reduction="sum"``), or the original code's mean
    :math:`\frac1k \sum_i (\lambda_i - \lambda^*)^2` (``"mean"``, which :class:`~rnnnotes.flossing.Flossing`
    minimises); they differ by the factor ``k`` only."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' (the paper) or 'mean' (the original code), got {reduction!r}")
    squares = (exponents - target).pow(2)
    return squares.sum() if reduction == "sum" else squares.mean()


def jacobian_log_singular_values(step_fn, h0, inputs):
    r"""``(T, B, N)``: the log singular values (descending) of the long-term Jacobian
    :math:`D_t \cdots D_1` after every step ``t``. With :math:`D_t Q_{t-1} = Q_t R_t` and :math:`Q_0 = I`,
    :math:`D_t \cdots D_1 = Q_t R_t \cdots R_1`, so the singular values are those of the triangular product, kept
    normalised (its log scale carried apart) so that its largest singular value neither overflows nor underflows.
    The product is carried in float64 whatever the model's dtype: float32 would lose a singular value below about
    1e-38 of the largest (a condition number growing tenfold a step leaves it within 40 steps); float64 keeps down to
    about 1e-308, and one that falls below even that reads as ``-inf``. The condition number is
    ``exp(s[..., 0] - s[..., -1])``. ``step_fn``, ``h0`` and ``inputs`` as in :func:`lyapunov_spectrum` (unbatched:
    ``(T, 1, N)``); the result is in ``h0``'s dtype."""
    step_fn, h0, inputs = _batched(step_fn, h0, inputs)
    _check(h0, inputs, 1, 1, 0)
    B, N = h0.shape
    Q = torch.eye(N, dtype=h0.dtype, device=h0.device).expand(B, N, N).clone()
    product = torch.eye(N, dtype=torch.float64, device=h0.device).expand(B, N, N).clone()
    log_scale, h, out = torch.zeros(B, 1, dtype=torch.float64, device=h0.device), h0, []
    for x in inputs:
        h, Q = tangent_step(step_fn, h, x, Q)
        Q, R = torch.linalg.qr(Q)
        product = R.to(torch.float64) @ product
        norm = product.flatten(1).norm(dim=1)[:, None]
        product, log_scale = product / norm[..., None], log_scale + norm.log()
        out.append(torch.linalg.svdvals(product).log() + log_scale)
    return torch.stack(out).to(h0.dtype)
