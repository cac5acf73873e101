"""Training runs behind the notebooks: ``train_run``, the stored-run directory, and the pieces experiments share.

An experiment is a frozen config (:mod:`rnnnotes.spiking_experiments`, :mod:`rnnnotes.rate_experiments`) whose
fields are the run's identity. ``config.build(device)`` assembles network, task stream, objective, optimizer,
schedule, credit rule, DEEP R and validation into a :class:`~rnnnotes.train.Training`;
``train_run(config, name=...)`` trains it through :func:`rnnnotes.train.fit` into
``results/<notebook>/<key>/<name>/``, where the key hashes the config, the device and the package's source
(:func:`rnnnotes.store.source_hash`), so a changed module never silently reuses a stale model. Every random
stream comes from the config's seed (:mod:`rnnnotes.seeding`).
"""
import numbers
from dataclasses import asdict
from typing import Any, NamedTuple

import pandas as pd
import torch

from . import resolve_device, store
from .checks import require_count, require_positive
from .data import mnist_dir_in_use
from .rewiring import DeepR, sign_constrained_init
from .seeding import generator
from .train import fit


class Run(NamedTuple):
    model: Any  # the trained network (None when the run failed before training)
    objective: Any  # the run's loss, for evaluating the model on other data
    history: pd.DataFrame  # fit's metrics, one row per step
    status: str  # "finished", "diverged" or "failed"
    message: str
    run_dir: Any


def train_run(config, *, name="run", device="auto", progress=True):
    """Build ``config`` on ``device``, train it, store it under ``results/<config.notebook>/<key>/<name>``; a
    finished run with the same key is reused and an interrupted one resumes (see :func:`rnnnotes.train.fit`)."""
    device = resolve_device(device)
    setup = config.build(device)
    run_dir = run_directory(config, name, device)
    result = fit(setup.with_config(progress=progress), run_dir=run_dir)
    return Run(setup.model, setup.objective, result.history, result.status, result.message, run_dir)


def run_directory(config, name, device):
    """``results/<config.notebook>/<key>/<name>``; the key hashes the config, the resolved device and the source,
    and for a config that reads MNIST the directory its digits come from (``$RNNNOTES_MNIST_DIR`` when it names
    none)."""
    identity = {**asdict(config), "device": str(device), "source": store.source_hash()}
    if "mnist_dir" in identity:
        identity["mnist_dir"] = mnist_dir_in_use(identity["mnist_dir"])
    return store.run_dir(config.notebook, identity, name)


def deep_r(weights, signs, *, connectivity, l1, temperature=0.0, seed):
    """Sign-constrained sparse init of ``weights`` (LSNN's balanced, spectral-radius-1 draw from the stream
    ``(seed, "deepr-init")``) and the :class:`~rnnnotes.rewiring.DeepR` that keeps them so; a square ``w_rec``
    never connects a neuron to itself."""
    g = generator(seed, "deepr-init")
    with torch.no_grad():
        for key, w in weights.items():
            w.copy_(sign_constrained_init(*w.shape, signs=signs[key], connectivity=connectivity, generator=g))
    allowed = {"w_rec": ~torch.eye(weights["w_rec"].shape[0], dtype=torch.bool)} if "w_rec" in weights else None
    return DeepR(weights, signs, connectivity=connectivity, l1=l1, temperature=temperature, seed=seed, allowed=allowed)


def adam_step_decay(model, lr, decay, every):
    """Adam at ``lr`` whose rate is multiplied by ``decay`` every ``every`` steps (the originals' schedule)."""
    require_positive(lr=lr)
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0 < decay <= 1:
        raise ValueError(f"lr_decay must be a number in (0, 1], got {decay!r}")
    require_count(decay_every=every)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=decay)
