"""Sweeps: grids x seeds of notebook executions (``sweep``), or of training configs inside a notebook
(``train_all``, or ``train_vectorized`` with the seeds of a config as one batched model).

One failure never stops the others; the summary says what ran and what failed. The points go to an executor with
``submit(fn, *args) -> future`` (:func:`executor`): a local pool, or SLURM through ``submitit``. Locally each point
is its own process (:func:`rnnnotes.runner.run_isolated`: ``python -m rnnnotes run`` and its kernel) and the pool's
threads only wait on them: killing one point's process fails that point alone, and a killed sweep takes its points
with it.
"""
import contextlib
import hashlib
import itertools
import numbers
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from dataclasses import replace

import pandas as pd

from . import experiments, profiles, seeds, store, thread_env

EXECUTORS = ("local", "slurm")


class LocalPool(ThreadPoolExecutor):
    """``jobs`` points at once, each in its own kernel process; ``point_env`` (:func:`rnnnotes.thread_env`) gives
    each ``cpu_count // jobs`` torch threads, so that the points share the cores instead of each taking them all."""

    def __init__(self, jobs):
        super().__init__(max_workers=jobs)
        self.point_env = thread_env(jobs)


def _count(name, value, least=1):
    """``value`` as an ``int`` if it is a whole number (not a bool) of at least ``least``, else ``ParameterError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer() or value < least:
        kind = "a positive" if least == 1 else "a non-negative"
        raise profiles.ParameterError(f"{name} must be {kind} integer, got {value!r}")
    return int(value)


def executor(kind="local", *, jobs=2, folder=None, partition=None, minutes=None, gpus=None, mem_gb=None):
    """An executor for sweep points: ``"local"``, a :class:`LocalPool` of ``jobs``; ``"slurm"``, ``submitit``'s
    ``AutoExecutor`` writing its logs to ``folder``: SLURM jobs (``partition``, time limit ``minutes``, ``gpus`` per
    job, ``mem_gb``; at most ``jobs`` running at once) where SLURM is installed, else submitit's local executor
    (subprocesses), which is how the SLURM path is tested. Bad input raises ``ParameterError``."""
    if kind not in EXECUTORS:
        raise profiles.ParameterError(f"unknown executor {kind!r}; valid executors: {', '.join(EXECUTORS)}")
    jobs = _count("jobs", jobs)
    minutes, gpus, mem_gb = (None if value is None else _count(name, value, least) for name, value, least in
                             (("minutes (--time)", minutes, 1), ("gpus", gpus, 0), ("mem_gb (--mem)", mem_gb, 1)))
    options = {"timeout_min": minutes, "gpus_per_node": gpus, "mem_gb": mem_gb, "slurm_partition": partition}
    if kind == "local":
        if any(v is not None for v in options.values()):
            raise profiles.ParameterError("partition, time, gpus and mem are options of --executor slurm")
        return LocalPool(jobs)
    try:
        import submitit
    except ImportError:
        raise profiles.ParameterError("executor 'slurm' needs submitit: .venv/bin/pip install submitit") from None
    pool = submitit.AutoExecutor(folder=str(folder or store.results_root() / "sweeps" / "submitit"))
    pool.update_parameters(slurm_array_parallelism=jobs, **{k: v for k, v in options.items() if v is not None})
    return pool


def seed_list(text):
    """``"0,1,2"`` as ``[0, 1, 2]``: non-negative integers, none repeated (``ParameterError`` otherwise)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise profiles.ParameterError(f"seeds must be comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise profiles.ParameterError(f"seeds must be distinct non-negative integers, got {text!r}")
    return values


def grid(axes):
    """All combinations of ``{name: [values]}`` as a list of dicts."""
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]


def _label(point):
    """``key=value`` pairs in key order, so a point's name does not depend on the order of the grid's axes."""
    return ",".join(f"{k}={point[k]}" for k in sorted(point)) or "defaults"


def _execute(name, profile, point, env=None):
    """Execute one point, its kernel's environment updated with ``env``; its status is ``reused`` (this code and
    this notebook, byte for byte, finished it before: not executed again), ``done``, ``resumed`` (an earlier
    execution of it was interrupted or failed, or its notebook changed since; the notebook's runs resume from their
    checkpoints) or ``failed`` (the notebook raised, or one of its training runs diverged: the cause is named)."""
    output = store.results_root() / "sweeps" / name / profile / f"{_label(point)}.ipynb"
    notebook = hashlib.sha256(profiles.notebook_path(name).read_bytes()).hexdigest()[:12]
    finished = output.with_suffix(".json")
    identity = {"point": point, "source": store.source_hash(), "notebook": notebook}
    if finished.exists() and store.read_json(finished) == identity:
        return "reused", str(output)
    status = "resumed" if output.exists() else "done"
    from . import runner  # Jupyter is needed here alone: the notebooks' training calls run where it is not installed
    try:
        entries = runner.run_logged(name, profile, point, output=output, env=env)
    except runner.NotebookFailed as err:
        return "failed", str(err)
    diverged = [f"run {Path(e['run']).name} diverged: {e['message']}" for e in entries if e["status"] == "diverged"]
    if diverged:
        return "failed", "; ".join(diverged)
    store.write_json(finished, identity)
    return status, str(output)


def sweep(name, profile, axes, *, executor=None):
    """Run ``name`` at ``profile`` for every point of the grid ``axes`` on ``executor`` (default: a
    :class:`LocalPool` of two); returns ``[(point, status, detail)]`` and writes them to
    ``sweeps/<name>/<profile>/summary.csv`` under the results directory. With a ``seed`` axis, the notebook's seed
    counts (:func:`profiles.seed_counts`) are 1 unless the grid sets them: a point is one seed, and the notebook run
    afterwards at its full counts draws its mean +/- sem from the points' stored runs."""
    if "seed" in axes:
        axes = {**{key: [1] for key in profiles.seed_counts(name)}, **axes}
    points = []
    for point in grid(axes):  # validate and type every point before anything runs
        values = profiles.resolve(name, profile, point)
        points.append({key: values[key] for key in point})
    executor = executor or LocalPool(2)
    env = getattr(executor, "point_env", None)
    with executor if hasattr(executor, "__enter__") else contextlib.nullcontext():
        futures = [executor.submit(_execute, name, profile, point, env) for point in points]
        outcomes = []
        for point, future in zip(points, futures):
            try:
                outcomes.append((point, *future.result()))
            except Exception as err:  # a crashed worker is one failed point, not a failed sweep
                outcomes.append((point, "failed", f"{type(err).__name__}: {err}"))
    table = pd.DataFrame([{**point, "status": status, "detail": (detail.strip().splitlines() or [""])[-1]}
                          for point, status, detail in outcomes])
    folder = store.results_root() / "sweeps" / name / profile
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "summary.csv", index=False)
    return outcomes


def paper(names=None, *, make_executor=executor):
    """``make paper``: every notebook of ``names`` (default all) at ``paper``; a notebook with seed counts first
    as a sweep of one point per seed on ``make_executor()`` (a fresh one per notebook), then once at its full
    counts, drawing every run from the store. Returns ``[(point, status, detail)]``, the point naming the
    notebook."""
    outcomes = []
    for name in names or profiles.notebook_names():
        counts = profiles.seed_counts(name)
        if counts:
            values = profiles.resolve(name, "paper")
            seeds = list(range(values["seed"], values["seed"] + max(values[c] for c in counts)))
            points = sweep(name, "paper", {"seed": seeds}, executor=make_executor())
            outcomes += [({"notebook": name, **p}, status, detail) for p, status, detail in points]
        outcomes.append(({"notebook": name}, *_execute(name, "paper", {})))
    return outcomes


def summary(outcomes):
    """One line per point (status, point, executed notebook or error), then the count of each status."""
    lines = [f"{status:7s} {_label(point)}  {detail}" for point, status, detail in outcomes]
    counts = pd.Series([status for _, status, _ in outcomes]).value_counts()
    lines.append(", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "reused", "resumed", "failed")))
    return "\n".join(lines)


def _failed(err):
    return experiments.Run(None, None, pd.DataFrame(), "failed", f"{type(err).__name__}: {err}", None)


def _train(key, config, device, progress):
    try:
        return experiments.train_run(config, name=_run_name(key), device=device, progress=progress)
    except store.MissingRun:  # training is forbidden (a book from stored results): not a failed run
        raise
    except Exception as err:  # a crashed run is one failed point, not a failed sweep
        return _failed(err)


def _run_name(key):
    return "-".join(map(str, key)) if isinstance(key, tuple) else str(key)


def train_all(configs, *, device="auto", executor=None, progress=False):
    """``{key: Run}`` for ``{key: config}`` (see :func:`rnnnotes.experiments.train_run`), each stored under the
    run name made of its key. In this process one after the other, or on ``executor``; a run that raises is
    returned with status ``"failed"`` and the others go on."""
    if executor is None:
        return {key: _train(key, config, device, progress) for key, config in configs.items()}
    with executor:
        futures = {key: executor.submit(_train, key, config, device, progress) for key, config in configs.items()}
        return {key: future.result() for key, future in futures.items()}


def train_vectorized(configs, *, device="auto", progress=False):
    """:func:`train_all` in this process, with the configs that differ only in ``seed`` trained together as one
    batched model (:func:`rnnnotes.seeds.train_runs`); each run is stored where :func:`train_all` stores it, so
    either reuses the other's finished runs. A group that raises fails each of its runs; the others go on."""
    groups = {}
    for key, config in configs.items():
        groups.setdefault(replace(config, seed=0), []).append(key)
    runs = {}
    for keys in groups.values():
        try:
            found = seeds.train_runs([configs[k] for k in keys], names=[_run_name(k) for k in keys], device=device,
                                     progress=progress)
        except store.MissingRun:
            raise
        except Exception as err:  # a crashed group is failed points, not a failed sweep
            found = [_failed(err)] * len(keys)
        runs.update(zip(keys, found))
    return {key: runs[key] for key in configs}
