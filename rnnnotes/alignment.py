r"""Gradient alignment: how close a credit rule's gradient is to the exact one.

For a rule's gradient :math:`\hat g` and BPTT's :math:`g` of the same objective on the same batch, the alignment is
the cosine similarity :math:`\cos = \langle \hat g, g \rangle / (\|\hat g\|\, \|g\|)` (in float64), over all
trainable parameters concatenated and per parameter tensor. :func:`initial_alignment` measures it on an untrained
network and :func:`alignment_trajectory` along a training run of
:class:`~rnnnotes.rate_experiments.DelayedXORCredit` through :func:`rnnnotes.train.fit`'s evaluation hook. A rule
is given as its name or as ``(name, options)`` for :func:`rnnnotes.credit.make_rule`.
"""
import math
from dataclasses import replace

import pandas as pd
import torch

from . import credit, numerics, resolve_device
from .checks import require_count
from .model import Network
from .rate_experiments import DelayedXORCredit
from .tasks import TaskStream
from .train import fit, to_device


def _parse(spec):
    """``(name, options)`` of a rule spec (a name or a ``(name, options)`` pair)."""
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[1], dict):
        name, options = spec
    else:
        raise ValueError(f"rules: each rule must be a name or a (name, options) pair, got {spec!r}")
    if name not in credit.RULES:
        raise ValueError(f"rules: unknown rule {name!r}; valid rules: {', '.join(credit.RULES)}")
    return name, dict(options)


def rule_label(spec):
    """A rule spec's label in tables: its name, with its options: ``"modprop(mu=0.25, taps=3)"``."""
    name, options = _parse(spec)
    shown = [f"{k}={'tensor' if torch.is_tensor(v) else v}" for k, v in options.items()]
    return f"{name}({', '.join(shown)})" if shown else name


def build_rules(model, rules, *, defaults=None):
    """``{label: Rule}``: each spec of ``rules`` built by ``credit.make_rule`` on ``model.cell`` (``n_out``: the
    readout's width) with the options ``defaults`` updated by the spec's own."""
    if not isinstance(model, Network):
        raise ValueError(f"model must be a Network (a cell and a readout), got {type(model).__name__}")
    if isinstance(rules, str) or not rules:
        raise ValueError(f"rules must be a non-empty list of rule names or (name, options) pairs, got {rules!r}")
    built = {}
    for spec in rules:
        name, options = _parse(spec)
        label = rule_label(spec)
        if label in built:
            raise ValueError(f"rules: {label!r} is listed twice")
        built[label] = credit.make_rule(name, model.cell, n_out=model.readout.w_out.shape[1],
                                        **{**(defaults or {}), **options})
    return built


def _gradient(model, objective, batch, rule, params):
    """The gradient of ``objective(model, batch, rule)[0]`` w.r.t. ``params`` (zeros where unused)."""
    loss, _ = objective(model, batch, rule)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def cosine(a, b):
    r""":math:`\langle a, b \rangle / (\|a\| \|b\|)` of two tensors, flattened, in float64; NaN if either is 0."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    norms = a.norm() * b.norm()
    return (a @ b / norms).item() if norms > 0 else math.nan


@numerics.flush_denormal()
@numerics.reuse_freed_memory()
def gradient_cosines(model, objective, batches, rules, *, defaults=None):
    """The cosine between each rule's gradient and BPTT's (plain autograd) on each of ``batches``, for all
    trainable parameters of ``model`` concatenated (``parameter == "all"``) and for each parameter tensor (its
    name). ``objective(model, batch, rule) -> (loss, metrics)``; ``rules`` and ``defaults`` as in
    :func:`build_rules`. Returns a DataFrame with columns rule, batch (index in ``batches``), parameter, cosine.
    Subnormal floats are flushed to zero, as in :func:`rnnnotes.train.fit`."""
    built = build_rules(model, rules, defaults=defaults)
    if isinstance(batches, (str, bytes)) or not batches:
        raise ValueError("batches must be a non-empty list of batches")
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    rows = []
    for index, batch in enumerate(batches):
        exact = _gradient(model, objective, batch, None, params)
        flat = torch.cat([g.flatten() for g in exact])
        for label, rule in built.items():
            grads = _gradient(model, objective, batch, rule, params)
            rows.append((label, index, "all", cosine(torch.cat([g.flatten() for g in grads]), flat)))
            rows += [(label, index, n, cosine(g, e)) for n, g, e in zip(names, grads, exact)]
    return pd.DataFrame(rows, columns=["rule", "batch", "parameter", "cosine"])


def _rule_defaults(config, training):
    """The options ``config`` gives its own rule: ``mu``, E/I cell types (DEEP R's row signs of ``W_rec``) and
    the run's seed (random feedback)."""
    signs = training.rewiring.state_dict()["signs"]["w_rec"][:, 0]
    return {"mu": config.mu, "n_types": (signs > 0).long(), "seed": config.seed}


def _prepared(config, overrides, *, n_batches, stream, device):
    """``(training, held_out, defaults)``: ``config`` with ``overrides`` built on ``device``, batches
    ``0 .. n_batches - 1`` of its task's data stream ``stream`` on ``device``, and the rule options of
    :func:`_rule_defaults`."""
    if not isinstance(config, DelayedXORCredit):
        raise ValueError(f"config must be a DelayedXORCredit, got {type(config).__name__}")
    require_count(n_batches=n_batches)
    if stream in ("train", "validation"):
        raise ValueError(f"stream must differ from the training and validation streams, got {stream!r}")
    device = resolve_device(device)
    training = replace(config, **overrides).build(device)
    held_out = TaskStream(training.task.make, seed=training.task.seed, stream=stream, **training.task.kwargs)
    return training, [to_device(held_out(k), device) for k in range(n_batches)], _rule_defaults(config, training)


def _all_parameters(table, seed):
    """The rows of ``table`` over all parameters concatenated, with the run's seed."""
    return table[table["parameter"] == "all"].assign(seed=seed)


def initial_alignment(config, rules, *, n_batches, stream="alignment", device="auto"):
    """:func:`gradient_cosines` of ``rules`` on the untrained network of ``config`` (a
    :class:`~rnnnotes.rate_experiments.DelayedXORCredit`), on the held-out batches and with the rule options of
    :func:`alignment_trajectory` (its step 0). Returns a DataFrame: seed, rule, batch, cosine (all parameters)."""
    training, batches, defaults = _prepared(config, {}, n_batches=n_batches, stream=stream, device=device)
    table = gradient_cosines(training.model, training.objective, batches, rules, defaults=defaults)
    return _all_parameters(table, config.seed)[["seed", "rule", "batch", "cosine"]].reset_index(drop=True)


def alignment_trajectory(config, rules, *, n_steps, every, n_batches, stream="alignment", device="auto"):
    """Train ``config`` (a :class:`~rnnnotes.rate_experiments.DelayedXORCredit`, with its own rule) for ``n_steps``
    steps by :func:`rnnnotes.train.fit` and measure :func:`gradient_cosines` of ``rules`` at step 0, every
    ``every`` steps and at the last step, on the same ``n_batches`` held-out batches ``0 .. n_batches - 1`` of the
    data stream ``stream`` (distinct from ``"train"`` and ``"validation"``). Rule options default to those the
    config gives its own rule (``mu``, E/I cell types, ``seed``). Returns a DataFrame, one row per measured step,
    rule and batch: seed, step, rule, batch, cosine (all parameters concatenated); nothing is stored."""
    require_count(n_steps=n_steps, every=every)
    training, batches, defaults = _prepared(config, dict(n_iterations=n_steps, eval_every=every),
                                            n_batches=n_batches, stream=stream, device=device)
    frames = []

    def measure(model):
        with torch.enable_grad():
            frames.append(gradient_cosines(model, training.objective, batches, rules, defaults=defaults))
        return {"cosine": frames[-1].query("parameter == 'all'")["cosine"].mean()}

    measure(training.model)
    history = fit(training._replace(evaluate=measure)).history
    steps = [0] + (history.loc[history["eval_cosine"].notna(), "step"].tolist() if len(frames) > 1 else [])
    table = pd.concat([f.assign(step=s) for s, f in zip(steps, frames)], ignore_index=True)
    return _all_parameters(table, config.seed)[["seed", "step", "rule", "batch", "cosine"]].reset_index(drop=True)
