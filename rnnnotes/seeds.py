"""Seeds of one experiment trained as one batched model: one forward, one backward, one optimizer step for all.

The seeds' parameters are stacked along a leading seed dimension (:func:`torch.func.stack_module_state`) and the
network runs once as ``vmap(functional_call(...))`` over it; the per-seed losses are summed for one backward, so
each seed's gradient is its own. Everything random stays per seed: initial weights, batches (``task(step)`` of the
seed's own stream), random feedback matrices and DEEP R draws. The optimizer steps the stacked tensors, which
equals one optimizer per seed for elementwise optimizers (Adam, SGD); gradient clipping acts per seed and tensor;
DEEP R, losses, logged metrics and evaluation run per seed. Seed ``s`` thus trains as :func:`rnnnotes.train.fit`
trains it alone, up to the rounding of batched matrix products.

While a group trains, each seed's module holds its parameters as views of the stacked tensors, so its own
:class:`~rnnnotes.rewiring.DeepR` and evaluation act on the live weights. Checkpoints and results are written per
seed, in ``fit``'s layout and in the seed's own run directory: a group resumes from per-seed checkpoints and a
single run from a group's. A seed that diverges or stops early keeps its weights while the others go on, its
result stored at once.
"""
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from . import credit, numerics, resolve_device, store
from .experiments import Run, run_directory
from .model import NetworkOutput
from .train import _diverged, _early_stop, _finish, _log_row, _restore, _reuse, _state, to_device


class SeedGroup(NamedTuple):
    """The seeds of one config as one batched model (see :func:`stack`)."""

    trainings: list  # one Training per seed; its model's parameters are views of ``params``
    params: dict  # name -> (S, ...) stacked leaf tensors, what the optimizer steps
    buffers: dict  # name -> (S, ...) stacked buffers
    feedback: Any  # (S, n, n_out) random feedback matrices, or None (symmetric feedback, BPTT)
    optimizer: Any  # the first training's optimizer, moved onto ``params``
    scheduler: Any  # the first training's scheduler (None without one)


def _check_group(trainings):
    """Raise ``ValueError`` unless ``trainings`` can train as one batched model."""
    first = trainings[0]
    if any(t.config != first.config for t in trainings):
        raise ValueError("the seeds of a group must share one FitConfig")
    if any(t.flossing for t in trainings):
        raise ValueError("gradient flossing is not vectorised over seeds; train these runs one by one")
    if len({t.rule.name if t.rule else None for t in trainings}) != 1:
        raise ValueError("the seeds of a group must use one credit rule")
    if not hasattr(first.objective, "metrics"):
        raise ValueError(f"the objective must be a losses.Objective, got {first.objective!r}")
    if len(first.optimizer.param_groups) != 1 or first.optimizer.state:
        raise ValueError("the optimizer must have one parameter group and must not have stepped yet")
    if len(first.optimizer.param_groups[0]["params"]) != len(list(first.model.parameters())):
        raise ValueError("the optimizer must hold every parameter of the model")


def stack(trainings):
    """A :class:`SeedGroup` of ``trainings``, the seeds of one config (built, not trained): their parameters
    stacked, each module's parameters turned into views of its slice, the first optimizer moved onto the stack."""
    _check_group(trainings)
    params, buffers = stack_module_state([t.model for t in trainings])
    for s, t in enumerate(trainings):
        for name, p in t.model.named_parameters():
            p.data = params[name].data[s]
    optimizer = trainings[0].optimizer
    optimizer.param_groups[0]["params"] = list(params.values())
    feedback = [t.rule.feedback if t.rule else None for t in trainings]
    feedback = None if feedback[0] is None else torch.stack(feedback).to(next(iter(params.values())))
    return SeedGroup(trainings, params, buffers, feedback, optimizer, trainings[0].scheduler)


def forward(group, x):
    """The seeds' :class:`~rnnnotes.model.NetworkOutput` on their inputs ``x (S, T, B, n_in)``, each field with a
    leading seed dimension: the first seed's module under ``vmap`` with each seed's parameters (and feedback)."""
    first = group.trainings[0]

    def one(params, buffers, x, feedback):
        rule = first.rule if feedback is None else first.rule._replace(readout=credit.feedback_readout(feedback))
        return functional_call(first.model, (params, buffers), (x,), {"rule": rule})
    in_dims = (0, 0, 0, None if group.feedback is None else 0)
    return vmap(one, in_dims=in_dims)(group.params, group.buffers, x, group.feedback)


def _seed_loss(group, s, out, batch):
    """``(loss, metrics)`` of seed ``s``: its objective on its slice of ``out`` (the L2 term on its weights)."""
    objective = group.trainings[s].objective
    result = NetworkOutput(out.out[s], type(out.hidden)(*(h[s] for h in out.hidden)))
    weights = {name: group.params[name][s] for name in objective.decayed} if objective.l2_weight else {}
    loss, task = objective.loss(result, batch, weights)
    return loss, objective.metrics(result, batch, loss, task)


def _clip(params, max_norm):
    """``clip_grad_norm_(p, max_norm)`` applied to each seed's slice of each stacked tensor ``p``."""
    for p in params.values():
        if p.grad is not None:
            norm = torch.linalg.vector_norm(p.grad.flatten(1), dim=1)
            scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
            p.grad.mul_(scale.view(-1, *(1,) * (p.dim() - 1)))


def train_step(group, step, live):
    """``fit``'s training step for the seeds in ``live``, batched: ``{s: (row, loss)}``, ``row`` None where the
    loss is not finite or above ``max_loss``. Only seeds with a row are updated; the others keep their weights."""
    trainings, config = group.trainings, group.trainings[0].config
    device = next(iter(group.params.values())).device
    batches = [to_device(t.task(step), device) for t in trainings]
    lr = group.optimizer.param_groups[0]["lr"]
    for s in live:
        if trainings[s].rewiring:
            trainings[s].rewiring.before_step()
    group.optimizer.zero_grad(set_to_none=True)
    out = forward(group, torch.stack([b.x for b in batches]))
    losses = {s: _seed_loss(group, s, out, batches[s]) for s in live}
    good = [s for s in live if math.isfinite(losses[s][1]["loss"]) and losses[s][1]["loss"] <= config.max_loss]
    if good:
        sum(losses[s][0] for s in good).backward()
        if config.clip_norm:
            _clip(group.params, config.clip_norm)
        held = [s for s in range(len(trainings)) if s not in good]  # stopped seeds: undo the optimizer's move
        kept = {name: p.detach()[held].clone() for name, p in group.params.items()} if held else {}
        group.optimizer.step()
        with torch.no_grad():
            for name, value in kept.items():
                group.params[name][held] = value
        for s in good:
            if trainings[s].rewiring:
                trainings[s].rewiring.step(lr, step)
        if group.scheduler:
            group.scheduler.step()
    return {s: (_log_row(trainings[s], step, losses[s][1], lr, {}) if s in good else None, losses[s][1]["loss"])
            for s in live}


class _SeedOptimizer:
    """Seed ``s``'s slice of an optimizer over stacked tensors, with the ``state_dict`` / ``load_state_dict`` of a
    per-seed optimizer: state entries shaped like the parameter are sliced, the others (a step count) shared."""

    def __init__(self, optimizer, s):
        self.optimizer, self.s = optimizer, s

    def state_dict(self):
        full, params = self.optimizer.state_dict(), self.optimizer.param_groups[0]["params"]
        state = {i: {k: v[self.s].clone() if torch.is_tensor(v) and v.shape == params[i].shape else v
                     for k, v in entries.items()} for i, entries in full["state"].items()}
        return {"state": state, "param_groups": full["param_groups"]}

    def load_state_dict(self, saved):
        params = self.optimizer.param_groups[0]["params"]
        for i, entries in saved["state"].items():
            slots = self.optimizer.state[params[i]]
            for k, v in entries.items():
                if torch.is_tensor(v) and v.dim() and v.shape == params[i].shape[1:]:
                    slots.setdefault(k, torch.zeros_like(params[i]))[self.s] = v
                else:
                    slots[k] = v
        self.optimizer.param_groups[0].update({k: v for k, v in saved["param_groups"][0].items() if k != "params"})


def _seed_view(group, s):
    """Seed ``s``'s training as ``fit``'s checkpoint functions see it: its module and DEEP R, the group's
    scheduler and the seed's slice of the group's optimizer."""
    return group.trainings[s]._replace(optimizer=_SeedOptimizer(group.optimizer, s), scheduler=group.scheduler)


def _checkpoint(group, s, step, rows):
    """Seed ``s``'s checkpoint in ``fit``'s layout, its weights copied out of the stacked tensors."""
    view = _seed_view(group, s)
    return {**_state(step, rows, view, None), "model": {k: v.clone() for k, v in view.model.state_dict().items()}}


def _unstacked(model):
    """``model`` with its parameters copied out of the stacked tensors (no longer views)."""
    for p in model.parameters():
        p.data = p.data.clone()
    return model


def _train_group(trainings, run_dirs, checkpoints):
    """``fit`` of ``trainings`` as one :class:`SeedGroup`, from their ``checkpoints`` (all at one step, or
    None); a ``FitResult`` per seed."""
    group, config, n = stack(trainings), trainings[0].config, len(trainings)
    start, rows = 0, [[] for _ in trainings]
    for s, checkpoint in enumerate(checkpoints):
        if checkpoint is not None:
            start, rows[s] = _restore(checkpoint, _seed_view(group, s), None)
    results, live = [None] * n, list(range(n))

    def end(s, status, message):
        live.remove(s)
        results[s] = _finish(run_dirs[s], rows[s], status, message, _unstacked(trainings[s].model))
    started = time.perf_counter()
    for s in range(n):  # restored rows that meet the stop: stopped before its result was stored
        stop = _early_stop(config, rows[s], started)
        if stop:
            end(s, "finished", stop)
    bar = tqdm(total=config.steps, initial=start, disable=not config.progress, desc=f"training {n} seeds")
    for step in range(start, config.steps):
        if not live:
            break
        for s, (row, loss) in train_step(group, step, live).items():
            if row is None:
                message = _diverged(step, loss, config)
                print(f"{run_dirs[s].name if run_dirs[s] else f'seed {s}'}: {message}")
                end(s, "diverged", message)
                continue
            rows[s].append(row)
            if run_dirs[s] and (step + 1) % config.checkpoint_every == 0:
                store.save_torch(run_dirs[s] / "checkpoint.pt", _checkpoint(group, s, step + 1, rows[s]))
            stop = _early_stop(config, rows[s], started)
            if stop:
                end(s, "finished", stop)
        bar.update()
    bar.close()
    for s in list(live):
        end(s, "finished", f"finished {config.steps} steps")
    return results


@numerics.flush_denormal()
@numerics.reuse_freed_memory()
def fit_seeds(trainings, *, run_dirs=None):
    """:func:`rnnnotes.train.fit` of each of ``trainings`` (the seeds of one config, built, not trained) as one
    batched model; a ``FitResult`` per training. With ``run_dirs`` (one per training) finished runs are reused
    and the others resume from their checkpoints; seeds checkpointed at different steps train as separate
    groups. A state carried across batches (``carry_state``) is not supported here."""
    if any(t.config.carry_state for t in trainings):
        raise ValueError("carry_state: vectorised seeds start every batch from the zero state; train with fit")
    run_dirs = [Path(d) if d else None for d in run_dirs or [None] * len(trainings)]
    results, pending = [None] * len(trainings), {}
    for s, (t, run_dir) in enumerate(zip(trainings, run_dirs)):
        if run_dir and (run_dir / "result.json").exists():
            results[s] = _reuse(run_dir, t.model)
            continue
        store.require_training_allowed(run_dir)
        path = run_dir / "checkpoint.pt" if run_dir else None
        checkpoint = store.load_torch(path) if path and path.exists() else None
        pending.setdefault(checkpoint["step"] if checkpoint else 0, []).append((s, checkpoint))
    for members in pending.values():
        found = _train_group([trainings[s] for s, _ in members], [run_dirs[s] for s, _ in members],
                             [checkpoint for _, checkpoint in members])
        for (s, _), result in zip(members, found):
            results[s] = result
    return results


def train_runs(configs, *, names, device="auto", progress=True):
    """:func:`rnnnotes.experiments.train_run` of each of ``configs`` (one config at several seeds) under the run
    name of the same index, trained as one batched model (:func:`fit_seeds`); a ``Run`` per config."""
    if len({replace(c, seed=0) for c in configs}) != 1:
        raise ValueError("configs of one batched model may differ only in seed")
    device = resolve_device(device)
    trainings = [c.build(device).with_config(progress=progress) for c in configs]
    run_dirs = [run_directory(c, name, device) for c, name in zip(configs, names)]
    results = fit_seeds(trainings, run_dirs=run_dirs)
    return [Run(t.model, t.objective, r.history, r.status, r.message, d)
            for t, r, d in zip(trainings, results, run_dirs)]
