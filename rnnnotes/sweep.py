"""Sweeps: grids x seeds of notebook executions (``sweep``), or of training configs inside a notebook
(``train_all``, or ``train_vectorized`` with the seeds of a config as one batched model).

One failure never stops the others; the summary says what ran and what failed. Any
``concurrent.futures.Executor`` works (for SLURM, ``submitit.AutoExecutor`` has the same interface).
"""
import itertools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import pandas as pd

from . import experiments, profiles, runner, seeds, store


def grid(axes):
    """All combinations of ``{name: [values]}`` as a list of dicts."""
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]


def _label(point):
    return ",".join(f"{k}={v}" for k, v in point.items()) or "defaults"


def _execute(name, profile, point):
    output = store.results_root() / "sweeps" / name / profile / f"{_label(point)}.ipynb"
    try:
        return "ok", str(runner.run(name, profile, point, output=output))
    except runner.NotebookFailed as err:
        return "failed", str(err)


def sweep(name, profile, axes, *, executor=None):
    """Run ``name`` at ``profile`` for every point of the grid ``axes``; returns ``[(point, status, detail)]``."""
    points = grid(axes)
    for point in points:  # validate every point before anything runs
        profiles.resolve(name, profile, point)
    executor = executor or ProcessPoolExecutor(max_workers=2)
    with executor:
        futures = [executor.submit(_execute, name, profile, point) for point in points]
        outcomes = []
        for point, future in zip(points, futures):
            try:
                outcomes.append((point, *future.result()))
            except Exception as err:  # a crashed worker is one failed point, not a failed sweep
                outcomes.append((point, "failed", f"{type(err).__name__}: {err}"))
    return outcomes


def summary(outcomes):
    lines = [f"{status:7s} {_label(point)}  {detail}" for point, status, detail in outcomes]
    failed = sum(status != "ok" for _, status, _ in outcomes)
    lines.append(f"{len(outcomes) - failed} ran, {failed} failed")
    return "\n".join(lines)


def _failed(err):
    return experiments.Run(None, None, pd.DataFrame(), "failed", f"{type(err).__name__}: {err}", None)


def _train(key, config, device, progress):
    try:
        return experiments.train_run(config, name=_run_name(key), device=device, progress=progress)
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
        except Exception as err:  # a crashed group is failed points, not a failed sweep
            found = [_failed(err)] * len(keys)
        runs.update(zip(keys, found))
    return {key: runs[key] for key in configs}
