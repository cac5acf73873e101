"""Figure pieces shared by the notebooks: spike rasters and voltage/threshold traces."""
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
