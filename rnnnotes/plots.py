"""Figure pieces shared by the notebooks: spike rasters, voltage/threshold traces, learning curves."""
import matplotlib.pyplot as plt
import numpy as np


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def raster(ax, z, *, dt=1.0, color="k", offset=0, label=None):
    """Spike raster of ``z (T, n)``: one row per neuron, time in ms on the x axis."""
    t, neuron = np.nonzero(_np(z))
    ax.scatter(t * dt, neuron + offset, s=2, marker="|", color=color, label=label)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("neuron")


def voltage_trace(ax, v, threshold, z, *, dt=1.0, color="C0", label=""):
    """Membrane potential with its (adaptive) threshold and ticks at the spike times."""
    v, threshold, z = _np(v), _np(threshold), _np(z)
    t = np.arange(len(v)) * dt
    ax.plot(t, v, color=color, lw=1, label=f"{label} v")
    ax.plot(t, threshold, color=color, lw=1, ls="--", label=f"{label} threshold")
    spikes = t[z > 0]
    ax.plot(spikes, np.full_like(spikes, np.max(threshold) * 1.15), "|", color=color, ms=8)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("membrane potential (a.u.)")


def _store_recall_panels(axes, x, z, threshold, out, y, *, window, n_regular):
    """The LSNN tutorial's four panels for one trial: inputs, spikes, output vs target, adaptive thresholds.

    ``x (T, n_in)``, ``z``/``threshold (T, n)``, ``out (T, 2)`` readout logits, ``y (T // window,)`` targets.
    """
    x, z, threshold, out, y = map(_np, (x, z, threshold, out, y))
    T, n_in = x.shape
    t = np.arange(T)
    shown = np.linspace(0, n_in - 1, 20).astype(int)
    raster(axes[0], x[:, shown])
    group = n_in // 4
    for k, (name, color) in enumerate((("value 0", "tab:red"), ("value 1", "tab:blue"),
                                       ("store", "gold"), ("recall", "tab:green"))):
        rows = np.nonzero((shown >= k * group) & (shown < (k + 1) * group))[0]
        if len(rows):
            axes[0].axhspan(rows[0] - 0.5, rows[-1] + 0.5, color=color, alpha=0.2, label=name)
    axes[0].set_ylabel("input channel")
    axes[0].legend(loc="upper right", fontsize=7, ncol=4)
    raster(axes[1], z[:, :n_regular], color="C0", label="LIF")
    raster(axes[1], z[:, n_regular:], color="C1", offset=n_regular, label="ALIF")
    axes[1].legend(loc="upper right", fontsize=7)
    p1 = np.exp(out[:, 1]) / np.exp(out).sum(1)
    axes[2].plot(t, p1, color="tab:purple", lw=0.8, label="p(bit = 1), time-resolved")
    for k, label in enumerate(y):
        if label >= 0:
            span = slice(k * window, (k + 1) * window)
            logits = out[span].mean(0)
            averaged = np.exp(logits[1]) / np.exp(logits).sum()
            axes[2].plot(t[span], np.full(window, label), color="tab:green", lw=3,
                         label="target" if k == np.argmax(y >= 0) else None)
            axes[2].plot(t[span], np.full(window, averaged), color="tab:blue", lw=2,
                         label="p(bit = 1), window average" if k == np.argmax(y >= 0) else None)
    axes[2].set_ylim(-0.05, 1.05)
    axes[2].set_ylabel("output")
    axes[2].legend(loc="upper right", fontsize=7)
    adaptive = threshold[:, n_regular:]
    top = np.argsort(adaptive.var(0))[-10:]
    axes[3].plot(t, adaptive[:, top], lw=0.8)
    axes[3].set_ylabel("threshold A_t (a.u.)")
    for ax in axes:
        ax.set_xlim(0, T)
    axes[-1].set_xlabel("time (ms)")


def learning_curves(ax, history, columns, *, labels=None):
    """Metric columns of a training history against the step (NaN rows skipped)."""
    for k, column in enumerate(columns):
        rows = history[history[column].notna()]
        ax.plot(rows["step"], rows[column], label=labels[k] if labels else column)
    ax.set_xlabel("training step")
    ax.legend(fontsize=8)


def seed_bands(ax, curves, *, xlabel="training step", ylabel=""):
    """Mean +- standard error over seeds of ``{label: DataFrame (step x seed)}`` (see ``summary.curves``)."""
    for label, frame in curves.items():
        mean = frame.mean(axis=1)
        sem = frame.std(axis=1) / np.sqrt(frame.notna().sum(axis=1))
        ax.plot(mean.index, mean, label=label)
        ax.fill_between(mean.index, mean - sem, mean + sem, alpha=0.25)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def store_recall_figure(trials, result, *, title, n_regular):
    """The four store-recall panels of the first trial of ``trials`` (``tasks.StoreRecallTrials``) as the network
    produced them (``result``: the network's output)."""
    batch = trials.batch
    fig, axes = plt.subplots(4, 1, figsize=(11, 8), sharex=True)
    _store_recall_panels(axes, batch.x[:, 0], result.hidden.z[:, 0], result.hidden.threshold[:, 0],
                        result.out[:, 0], batch.y[:, 0], window=batch.window, n_regular=n_regular)
    axes[0].set_title(title)
    fig.tight_layout()
    return fig


def two_neuron_traces(out, ax_v, ax_count):
    """A LIF (neuron 0) and an ALIF neuron (neuron 1) of ``out`` (a spiking cell's output, batch 0): voltages with
    thresholds and spikes on ``ax_v``, cumulative spike counts on ``ax_count``."""
    for k, (label, color) in enumerate((("LIF", "C0"), ("ALIF", "C1"))):
        voltage_trace(ax_v, out.v[:, 0, k], out.threshold[:, 0, k], out.z[:, 0, k], color=color, label=label)
        ax_count.plot(_np(out.z[:, 0, k]).cumsum(), color=color, label=label)
    ax_v.legend(loc="upper right", fontsize=8)
    ax_count.set_xlabel("time (ms)")
    ax_count.set_ylabel("cumulative spikes")
    ax_count.legend(fontsize=8)
