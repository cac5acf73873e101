"""Parameter grids x seeds as independent notebook executions, on a local process pool.

One failure never stops the others; the summary says what ran and what failed. Any
``concurrent.futures.Executor`` works (for SLURM, ``submitit.AutoExecutor`` has the same interface).
"""
import itertools
from concurrent.futures import ProcessPoolExecutor

from . import profiles, runner, store


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
