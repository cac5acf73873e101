"""The profile table: named sets of notebook parameters, and their validation.

Every notebook's ``parameters`` cell holds its ``smoke`` values (seconds, for tests). ``book`` is sized for the
rendered book on a laptop CPU (minutes), ``paper`` for the papers' own settings on one GPU. A profile lists only
what it changes; a name a notebook does not declare is an error.
"""
import ast
import os
import reprlib
from pathlib import Path

PROFILE_NAMES = ("smoke", "book", "paper")

PROFILES = {
    "01_neurons": {
        "smoke": {},
        "book": {"duration_ms": 1000, "n_currents": 40, "n_poisson": 200},
        "paper": {"duration_ms": 2000, "n_currents": 80, "n_poisson": 400},
    },
    "02_store_recall": {  # the LSNN tutorial's task; book: no synaptic delays (3.5x cheaper on CPU), at most 150
        # steps (the LIF control runs them all), a fresh validation batch every 5 steps, from rest, stopping at 97 %
        # so that the 95 % test claim clears the validation's sampling error (stopping at 95 %, seed 0 stopped at
        # step 110 and tested 0.932); paper: the tutorial's protocol (a fresh validation batch every step, stopping
        # rule at 95 % checked every 20, the training, validation and test states carried over)
        "smoke": {},
        "book": {"n_symbols": 12, "symbol_ms": 200, "batch_size": 128, "n_iterations": 150, "n_delay": 1,
                 "eval_every": 5, "stop_window": 4, "stop_accuracy": 0.97, "fresh_validation": True},
        "paper": {"n_symbols": 12, "symbol_ms": 200, "batch_size": 128, "n_iterations": 200, "eval_every": 1,
                  "stop_window": 20, "stop_every": 20, "carry_state": True, "fresh_validation": True},
    },
    "03_smnist": {  # book: the two DEEP R networks x 2 seeds in 10 CPU minutes, no synaptic delays (2.5x cheaper
        # on CPU), the paper's lr 0.01 (at batch 64 over 300 steps the DEEP R LSNN's training loss fell faster than
        # at 0.003 or 0.001) next to a short run at 0.003; paper: the LSNN tutorial's protocol, four networks, 3 seeds
        "smoke": {},
        "book": {"variants": ["lsnn_deepr", "lif_deepr"], "n_seeds": 2, "n_regular": 120, "n_adaptive": 100,
                 "n_iterations": 150, "batch_size": 64, "n_delay": 1, "lr": 0.01, "sweep_lrs": [0.003],
                 "sweep_seeds": 1, "sweep_iterations": 80, "eval_every": 40, "max_test": 256, "final_test": 1000},
        "paper": {"variants": ["lsnn_deepr", "lif_deepr", "lsnn", "lif"], "n_seeds": 3, "n_regular": 120,
                  "n_adaptive": 100, "n_iterations": 36000, "batch_size": 256, "lr": 0.01, "sweep_lrs": [0.003, 0.001],
                  "sweep_seeds": 3, "sweep_iterations": 2000, "eval_every": 400, "max_test": 10000,
                  "final_test": 10000},
    },
    "04_credit_assignment": {  # book: CPU minutes (4 seeds, 180 steps, one lr, e-prop's random feedback in the
        # alignment only); paper: ModProp's protocol, every rule
        "smoke": {},
        "book": {"n_seeds": 4, "n_neurons": 120, "delay_ms": 700, "cue_ms": 100, "n_iterations": 180,
                 "batch_size": 32, "lrs": [1e-3], "eval_every": 20, "mus": [0.25, 4.0], "n_mu_seeds": 2,
                 "n_val_batches": 2, "smooth": 3, "n_align_seeds": 8, "align_path_seeds": 2, "align_steps": 180,
                 "align_every": 60, "n_align_batches": 1},
        "paper": {"rules": ["bptt", "eprop", "eprop_random", "mdgl", "modprop", "modprop_true_w"], "n_seeds": 8,
                  "n_neurons": 120, "delay_ms": 700, "cue_ms": 100, "n_iterations": 3000,
                  "batch_size": 32, "lrs": [5e-4, 1e-3], "eval_every": 20,
                  "mus": [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0], "n_mu_seeds": 8, "n_val_batches": 1,
                  "fresh_validation": True, "smooth": 15,
                  "n_align_seeds": 8, "align_path_seeds": 8,
                  "align_steps": 3000, "align_every": 300, "n_align_batches": 4},
    },
    "05_curvature": {  # book: 5 rules x 5 seeds within 10 CPU minutes; paper: BiolHessRNN's network and schedule
        "smoke": {},
        "book": {"n_seeds": 5, "n_hidden": 128, "n_iterations": 200, "batch_size": 128, "eval_every": 50,
                 "n_hessian": 256, "sample_sizes": [32, 128, 512], "n_draws": 2, "lsnn_iterations": 20,
                 "lsnn_batch_size": 32},
        "paper": {"n_seeds": 5, "n_hidden": 128, "n_iterations": 16000, "batch_size": 256, "eval_every": 400,
                  "n_hessian": 256, "sample_sizes": [32, 128, 256, 1000], "n_draws": 5, "lsnn_iterations": 200,
                  "lsnn_batch_size": 128},
    },
    "06_gradient_flossing": {  # book: 3 delays x 4 seeds x 3 schedules in CPU minutes; paper: the original's sizes
        "smoke": {},
        "book": {"n_hidden": 32, "n_exponents": 16, "n_lyapunov": 55, "n_steps": 80, "delays": [4, 8, 12],
                 "curve_delay": 8, "n_seeds": 4, "n_iterations": 500, "batch_size": 16, "pre_steps": 200,
                 "inter_steps": 100, "inter_every": 100, "inter_max": 2, "eval_every": 50,
                 "spectrum_sequences": 8, "demo_floss_steps": 300, "horizon": 100, "alif_neurons": 20,
                 "alif_exponents": 4, "alif_floss_steps": 20, "alif_iterations": 300, "alif_delay": 4,
                 "alif_seeds": 2},
        "paper": {"n_hidden": 80, "n_exponents": 75, "n_lyapunov": 55, "n_steps": 300,
                  "delays": [5, 10, 15, 20, 30, 40, 50], "curve_delay": 20, "n_seeds": 5, "n_iterations": 3001,
                  "batch_size": 16, "pre_steps": 500, "inter_steps": 500, "inter_every": 100, "inter_max": 2,
                  "eval_every": 100, "spectrum_sequences": 16, "demo_floss_steps": 1000, "horizon": 300,
                  "alif_neurons": 80, "alif_exponents": 16, "alif_floss_steps": 200, "alif_iterations": 2000,
                  "alif_delay": 10, "alif_seeds": 5},
    },
    "07_hebbian_plasticity": {  # book: BOHP's task to >= 95 % in CPU minutes; paper: its 10,000 episodes, DP's
        # 1000 bits
        "smoke": {},
        "book": {"n_iterations": 2000, "eval_every": 100, "n_validation": 1000,
                 "forward_sizes": [8, 16, 29, 40, 50], "bptt_sizes": [8, 29, 100, 300, 1000],
                 "dp_iterations": 200, "dp_eval_every": 50, "dp_validation": 10, "n_examples": 4, "n_lyapunov": 8},
        "paper": {"n_iterations": 10000, "eval_every": 250, "n_validation": 1000,
                  "forward_sizes": [8, 16, 29, 40, 50, 70], "bptt_sizes": [8, 29, 100, 300, 1000],
                  "dp_iterations": 1000, "dp_eval_every": 50, "dp_validation": 50, "n_examples": 6, "n_lyapunov": 16},
    },
}

BOOK_MINUTES = {  # measured within `make book` (2 notebooks at a time on 2 cores): the longest start first
    "01_neurons": 0.1,
    "02_store_recall": 3.6,
    "03_smnist": 8.4,
    "04_credit_assignment": 9.2,
    "05_curvature": 3.1,
    "06_gradient_flossing": 4.8,
    "07_hebbian_plasticity": 3.4,
}

# Rough hours of each notebook at `paper`, printed by `make paper` before it starts: the whole notebook's time where
# it was measured on 2 CPU cores (book/reproducing.md) and no GPU run was timed, else the steps of the paper profile
# times a step's time on an H200. Re-measure and update when a GPU run is timed.
PAPER_HOURS = {
    "01_neurons": 0.01,  # measured: 12 s on CPU
    "02_store_recall": 0.1,  # LSNN + LIF control, at most 200 steps each x 0.377 s (H200, states carried over on
    # the fused loop, benchmarks/train_gpu.py), plus a validation batch every step
    "03_smnist": 11.2,  # 4 networks x 3 seeds x 36,000 steps, plus the lr sweep's 2 x 3 x 2,000, x 0.091 s (H200,
    # one step measured by benchmarks/train_gpu.py)
    "04_credit_assignment": 11.0,  # measured: about 11 h on 2 CPU cores
    "05_curvature": 1.9,  # measured: 1.9 h on 2 CPU cores
    "06_gradient_flossing": 1.4,  # measured: 1 h 23 min by `make paper` on 2 CPU cores
    "07_hebbian_plasticity": 0.45,  # measured: 26 min on 2 CPU cores
}


class ParameterError(ValueError):
    """A notebook, profile or parameter that does not exist, or a value of the wrong type."""


def notebook_dir():
    """``$RNNNOTES_NOTEBOOKS`` if set, else ``notebooks/`` in the current working directory (read at each call)."""
    path = Path(os.environ.get("RNNNOTES_NOTEBOOKS") or Path.cwd() / "notebooks")
    if not path.is_dir():
        raise ParameterError(f"notebook directory {path} does not exist; run from the repository root or set "
                             f"RNNNOTES_NOTEBOOKS to the directory holding the notebooks")
    return path


def notebook_names():
    """The notebooks ``NN_name`` in :func:`notebook_dir`, sorted."""
    return sorted(p.stem for p in notebook_dir().glob("[0-9][0-9]_*.ipynb"))


def notebook_path(name):
    names = notebook_names()
    if name not in names:
        raise ParameterError(f"unknown notebook {name!r}; valid notebooks: {', '.join(names)}")
    return notebook_dir() / f"{name}.ipynb"


def declared_parameters(name):
    """The names and default values of a notebook's ``parameters`` cell."""
    import papermill  # here, so that the profile table imports where papermill is absent (a bare GPU machine)
    found = papermill.inspect_notebook(str(notebook_path(name)))
    return {key: ast.literal_eval(info["default"]) for key, info in found.items()}


def _coerce(notebook, key, value, default):
    """``value`` as the type of ``default``; strings from the command line are parsed first (one that does not parse
    stays a string, refused unless ``default`` is one)."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = ast.literal_eval(value)
        except Exception:  # any failure to parse: a malformed literal, an unhashable key, nesting too deep
            pass
    kind = type(default)
    if default is None or isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ParameterError(f"{notebook}: parameter {key!r} must be {kind.__name__} (default {default!r}), "
                         f"got {reprlib.repr(value)}")


def resolve(name, profile="smoke", overrides=None):
    """Full parameter set for ``name`` at ``profile``, with ``overrides`` applied and every value type-checked;
    ``profile`` itself is not an override (a notebook's checks follow it)."""
    if profile not in PROFILE_NAMES:
        raise ParameterError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILE_NAMES)}")
    if "profile" in (overrides or {}):
        raise ParameterError(f"{name}: 'profile' is not a parameter to override; set the profile with --profile, "
                             f"not -p or -g")
    declared = declared_parameters(name)
    values = dict(declared)
    if "profile" in declared:
        values["profile"] = profile
    for source in (PROFILES.get(name, {}).get(profile, {}), overrides or {}):
        for key, value in source.items():
            if key not in declared:
                raise ParameterError(f"{name}: unknown parameter {key!r}; declared parameters: "
                                     f"{', '.join(sorted(declared))}")
            values[key] = _coerce(name, key, value, declared[key])
    return values


def seed_counts(name):
    """The parameters of ``name`` that count seeds (``n_seeds`` and those ending in ``_seeds``): the runs of seed
    ``seed + i`` for ``i < count``. A sweep over ``seed`` sets them to 1, so each point trains its own seed and the
    notebook at its full counts afterwards finds every run in the store."""
    return [key for key, default in declared_parameters(name).items()
            if (key == "n_seeds" or key.endswith("_seeds")) and isinstance(default, int)]


def settings_markdown():
    """The profile table as a Markdown table (notebook | smoke | book | paper), for the Reproducing page."""
    lines = ["| notebook | `smoke` | `book` | `paper` |", "|---|---|---|---|"]
    for name in sorted(PROFILES):
        cells = [", ".join(f"`{k}={v}`" for k, v in PROFILES[name][p].items()) or "the notebook's defaults"
                 for p in PROFILE_NAMES]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
