"""Tables and curves over many runs: seeds grouped, last evaluations averaged, mean and standard error."""
import numpy as np
import pandas as pd


def tail_mean(history, metric, *, fraction=0.25):
    """Mean of the last ``fraction`` (at least one) of the logged values of ``metric``; NaN if none was logged."""
    values = history[metric].dropna() if metric in history else pd.Series(dtype=float)
    return values.iloc[-max(1, int(len(values) * fraction)):].mean() if len(values) else np.nan


def curves(runs, metric):
    """``{group: DataFrame (step x seed)}`` of ``metric`` for runs keyed ``(group, seed)``."""
    out = {}
    for (group, seed), run in runs.items():
        series = run.history.set_index("step")[metric].dropna() if metric in run.history else pd.Series(dtype=float)
        out.setdefault(group, {})[seed] = series
    return {group: pd.concat(columns, axis=1) for group, columns in out.items()}


def final_table(runs, metrics, *, fraction=0.25):
    r"""One row per group of runs keyed ``(group, seed)``: for each metric the mean over seeds of its
    :func:`tail_mean` and the standard error :math:`\mathrm{std}/\sqrt{n}` (population std, as numpy)."""
    rows = {}
    for (group, _), run in runs.items():
        rows.setdefault(group, []).append([tail_mean(run.history, m, fraction=fraction) for m in metrics])
    table = {}
    for group, values in rows.items():
        values = np.array(values, dtype=float)
        table[group] = {**{m: values[:, k].mean() for k, m in enumerate(metrics)},
                        **{f"{m} sem": values[:, k].std() / np.sqrt(len(values)) for k, m in enumerate(metrics)},
                        "runs": len(values)}
    return pd.DataFrame.from_dict(table, orient="index")


def original_curve(frame, *, window=15):
    """ModProp's plot of the runs ``frame`` (step x seed, as :func:`curves` gives): each run smoothed by a moving
    mean over ``window`` evaluations (full windows only, each point at its window's last step), the run with the
    largest and then the one with the smallest area under its smoothed curve dropped (when at least three), and
    the mean and standard deviation (ddof = 1) of the rest. Returns a DataFrame (step x [mean, std, runs])."""
    if window < 1 or int(window) != window:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    smoothed = frame.rolling(int(window), min_periods=int(window)).mean().dropna(how="all")
    if smoothed.shape[1] >= 3:
        area = smoothed.sum()
        smoothed = smoothed.drop(columns=[area.idxmax()])
        smoothed = smoothed.drop(columns=[smoothed.sum().idxmin()])
    return pd.DataFrame({"mean": smoothed.mean(axis=1), "std": smoothed.std(axis=1, ddof=1),
                         "runs": smoothed.notna().sum(axis=1)})
