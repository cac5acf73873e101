"""The one training loop: progress bar, metrics per step, evaluation, atomic checkpoints, resume, NaN stop."""
import inspect
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import numerics, store
from .checks import require_bool, require_integer, require_nonnegative, require_positive
from .model import Carry


@dataclass(frozen=True)
class FitConfig:
    """``steps`` gradient steps; ``evaluate`` every ``eval_every`` steps (0: at the end only); a checkpoint every
    ``checkpoint_every`` steps; a loss that is not finite or exceeds ``max_loss`` stops the run. With
    ``stop_metric``, training ends early once the mean of its last ``stop_window`` logged values reaches
    ``stop_at``, checked after every ``stop_every``-th step (the LSNN tutorial checks every 20 iterations whether
    the recall error over the last 20 validations is below 5 %). ``max_seconds`` (> 0) ends a call of ``fit``
    after that much wall-clock time (a time-boxed run; 0: no limit). ``clip_norm`` (> 0) clips the gradient norm
    of each parameter tensor separately before the task step (0: no clipping). ``carry_state``: each batch starts
    from the state the previous one left, detached (:class:`~rnnnotes.model.Carry`; the LSNN tutorials do)."""

    steps: int
    eval_every: int = 0
    checkpoint_every: int = 50
    max_loss: float = 1e4
    progress: bool = True
    stop_metric: str = ""
    stop_at: float = 1.0
    stop_window: int = 1
    stop_every: int = 1
    max_seconds: float = 0.0
    clip_norm: float = 0.0
    carry_state: bool = False

    def __post_init__(self):
        require_positive(steps=self.steps, checkpoint_every=self.checkpoint_every, max_loss=self.max_loss,
                         stop_window=self.stop_window, stop_every=self.stop_every)
        require_integer(stop_window=self.stop_window, stop_every=self.stop_every)
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        require_nonnegative(max_seconds=self.max_seconds, clip_norm=self.clip_norm)
        require_bool(carry_state=self.carry_state)

    def reached(self, rows):
        """Whether the early-stopping target is met by the logged ``rows`` (checked when the last row's step is a
        multiple of ``stop_every``)."""
        if rows[-1]["step"] % self.stop_every:
            return False
        values = [r[self.stop_metric] for r in rows if self.stop_metric in r][-self.stop_window:]
        return len(values) == self.stop_window and sum(values) / len(values) >= self.stop_at


class FitResult(NamedTuple):
    history: pd.DataFrame  # one row per step; eval_* columns filled at evaluation steps
    status: str  # "finished" or "diverged"
    message: str


def to_device(batch, device):
    """``batch.to(device)`` (a :class:`~rnnnotes.tasks.Batch`), else the same NamedTuple with its tensors moved."""
    if hasattr(batch, "to"):
        return batch.to(device)
    return type(batch)(*(f.to(device) if torch.is_tensor(f) else f for f in batch))


def evaluator(objective, batches, *, carry=None):
    """``evaluate(model, step)``: the objective's metrics averaged over ``batches``, exact gradients not needed;
    ``batches`` a fixed list, or ``batches(step)`` giving the list for an evaluation after ``step`` training steps
    (a fresh validation set each time, as ModProp's protocol validates). Each batch starts from the zero state, or,
    with ``carry`` (a :class:`~rnnnotes.model.Carry`, kept as ``evaluate.carry``), from the state the previous
    batch left, across evaluations too, as the LSNN tutorials validate and test; :func:`fit` checkpoints it."""
    def evaluate(model, step=None):
        device = next(model.parameters()).device
        chosen = batches(step) if callable(batches) else batches
        metrics = [objective(model, to_device(b, device), **({"carry": carry} if carry else {}))[1] for b in chosen]
        return {k: sum(m[k] for m in metrics) / len(metrics) for k in metrics[0]}
    evaluate.carry = carry
    return evaluate


def _evaluate(evaluate, model, step):
    """``evaluate(model, step=step)`` where ``evaluate`` takes the step, else ``evaluate(model)``."""
    return evaluate(model, step=step) if "step" in inspect.signature(evaluate).parameters else evaluate(model)


class Training(NamedTuple):
    """Everything one run trains with: ``model`` on batches ``task(step)``, minimising
    ``objective(model, batch, rule[, carry]) -> (loss, metrics)`` with ``optimizer`` (and ``scheduler``) for
    ``config.steps`` steps; ``rule`` changes how credit flows (never the forward values), ``rewiring`` (DEEP R)
    acts around each optimizer step, ``flossing`` (:class:`~rnnnotes.flossing.Flossing`) runs its due steps before
    each task step, ``evaluate(model[, step]) -> dict`` is called without a rule (from the zero state, or from its
    own carried state: :func:`evaluator`)."""

    model: Any
    task: Any
    objective: Any
    optimizer: Any
    config: FitConfig
    scheduler: Any = None
    rule: Any = None
    rewiring: Any = None
    evaluate: Any = None
    flossing: Any = None

    def with_config(self, **changes):
        """The same training with fields of its :class:`FitConfig` replaced (e.g. ``max_seconds``)."""
        return self._replace(config=replace(self.config, **changes))


def _state(step, rows, t, carry):
    evaluation = _eval_carry(t)
    return {"step": step, "rows": rows, "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict() if t.scheduler else None,
            "rewiring": t.rewiring.state_dict() if t.rewiring else None,
            "flossing": t.flossing.state_dict() if t.flossing else None,
            "carry": carry.state if carry else None, "eval_carry": evaluation.state if evaluation else None}


def _eval_carry(t):
    """The :class:`~rnnnotes.model.Carry` of an evaluation that carries its state (:func:`evaluator`), or None."""
    return getattr(t.evaluate, "carry", None)


def _restore(ckpt, t, carry):
    t.model.load_state_dict(ckpt["model"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    if t.scheduler:
        t.scheduler.load_state_dict(ckpt["scheduler"])
    if t.rewiring:
        t.rewiring.load_state_dict(ckpt["rewiring"])
    if t.flossing:
        t.flossing.load_state_dict(ckpt["flossing"])
    if carry:
        carry.state = ckpt["carry"]
    evaluation = _eval_carry(t)
    if evaluation:
        evaluation.state = ckpt["eval_carry"]
    return ckpt["step"], ckpt["rows"]


def _reuse(run_dir, model):
    """The stored result in ``run_dir``, its weights loaded into ``model`` (a diverged run stored by an older
    version kept none)."""
    result = store.read_json(run_dir / "result.json")
    if result["status"] == "finished" or (run_dir / "model.pt").exists():
        model.load_state_dict(store.load_torch(run_dir / "model.pt"))
    store.log_run(run_dir, result["status"], result["message"], trained=False)
    history = pd.read_csv(run_dir / "metrics.csv") if result["steps"] else pd.DataFrame()
    return FitResult(history, result["status"], result["message"])


def _finish(run_dir, rows, status, message, model):
    """Store the run's metrics, the weights it ends with (a diverged run's last good ones) and its result."""
    history = pd.DataFrame(rows)
    if run_dir:
        store.save_table(run_dir / "metrics.csv", history)
        store.save_torch(run_dir / "model.pt", model.state_dict())
        store.write_json(run_dir / "result.json", {"status": status, "message": message, "steps": len(rows)})
    store.log_run(run_dir, status, message, trained=True)
    return FitResult(history, status, message)


def _train_step(t, step, device, carry):
    """One step: flossing when due, ``rewiring.before_step()``, backward, per-tensor clipping, ``optimizer.step()``,
    ``rewiring.step(lr, step)``, ``scheduler.step()``, evaluation when due. Returns ``(row, loss)``; ``row`` is
    None (nothing updated) when the loss is not finite or above ``max_loss``. ``carry``: the state carried in."""
    flossed = t.flossing.before_step(step) if t.flossing else {}
    batch = to_device(t.task(step), device)
    lr = t.optimizer.param_groups[0]["lr"]
    if t.rewiring:
        t.rewiring.before_step()
    t.optimizer.zero_grad(set_to_none=True)
    loss, metrics = t.objective(t.model, batch, t.rule, **({"carry": carry} if carry else {}))
    if not math.isfinite(metrics["loss"]) or metrics["loss"] > t.config.max_loss:
        return None, metrics["loss"]
    loss.backward()
    if t.config.clip_norm:
        for p in t.model.parameters():
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_(p, t.config.clip_norm)
    t.optimizer.step()
    if t.rewiring:
        t.rewiring.step(lr, step)
    if t.scheduler:
        t.scheduler.step()
    return _log_row(t, step, metrics, lr, flossed), metrics["loss"]


def _log_row(t, step, metrics, lr, flossed):
    """The logged row of step ``step`` (after its update): metrics, learning rate, flossing, DEEP R's active
    counts, and ``eval_*`` metrics when an evaluation is due."""
    row = {"step": step + 1, **metrics, "lr": lr, **flossed}
    if t.rewiring:
        row.update({f"active_{name}": count for name, count in t.rewiring.active_counts().items()})
    every, steps = t.config.eval_every, t.config.steps
    if t.evaluate and ((every and (step + 1) % every == 0) or step + 1 == steps):
        with torch.no_grad():
            row.update({f"eval_{k}": v for k, v in _evaluate(t.evaluate, t.model, step + 1).items()})
    return row


def _early_stop(config, rows, started):
    """Why training ends before ``config.steps`` (target reached, time used), or None (also with no rows yet)."""
    if not rows:
        return None
    if config.stop_metric and config.reached(rows):
        return f"reached mean {config.stop_metric} >= {config.stop_at:g} at step {rows[-1]['step']}"
    if config.max_seconds and time.perf_counter() - started > config.max_seconds:
        return f"stopped at step {rows[-1]['step']}: time budget of {config.max_seconds:g} s used"
    return None


def _diverged(step, loss, config):
    return (f"stopped at step {step}: loss {loss:.4g} is not finite or above max_loss={config.max_loss:g}; "
            f"kept the last good checkpoint")


@numerics.flush_denormal()
@numerics.reuse_freed_memory()
def fit(training, *, run_dir=None):
    """Train a :class:`Training` (see there for what each piece does), with denormals flushed to zero.

    With ``run_dir`` (a path or str), a finished or diverged run is reused, an interrupted one resumes from its last
    checkpoint and ends bitwise-identical on CPU (batches depend only on the step index), and a diverging one stops
    with ``status="diverged"`` keeping the last good checkpoint and weights (no non-finite value is logged).
    """
    t, config = training, training.config
    run_dir = Path(run_dir) if run_dir else None
    if run_dir and (run_dir / "result.json").exists():
        return _reuse(run_dir, t.model)
    store.require_training_allowed(run_dir)
    start, rows, carry = 0, [], Carry() if config.carry_state else None
    if run_dir and (run_dir / "checkpoint.pt").exists():
        start, rows = _restore(store.load_torch(run_dir / "checkpoint.pt"), t, carry)
    device = next(t.model.parameters()).device
    bar = tqdm(total=config.steps, initial=start, disable=not config.progress, desc="training")
    status, message = "finished", f"finished {config.steps} steps"
    started = time.perf_counter()
    stop = _early_stop(config, rows, started)  # restored rows that meet it: stopped before its result was stored
    for step in range(start, config.steps):
        if stop:
            break
        row, loss = _train_step(t, step, device, carry)
        if row is None:
            status, message = "diverged", _diverged(step, loss, config)
            print(message)
            break
        rows.append(row)
        bar.update()
        bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("loss", "accuracy", "rate_hz")})
        if run_dir and (step + 1) % config.checkpoint_every == 0:
            store.save_torch(run_dir / "checkpoint.pt", _state(step + 1, rows, t, carry))
        stop = _early_stop(config, rows, started)
    bar.close()
    return _finish(run_dir, rows, status, stop or message, t.model)
