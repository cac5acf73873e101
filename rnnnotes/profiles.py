"""The profile table: named sets of notebook parameters, and their validation.

Every notebook's ``parameters`` cell holds its ``smoke`` values (seconds, for tests). ``book`` is sized for the
rendered book on a laptop CPU (minutes), ``paper`` for the papers' own settings on one GPU. A profile lists only
what it changes; a name a notebook does not declare is an error.
"""
import ast
from pathlib import Path

import papermill

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"

PROFILE_NAMES = ("smoke", "book", "paper")

PROFILES = {
    "01_neurons": {
        "smoke": {},
        "book": {"duration_ms": 1000, "n_currents": 40, "n_poisson": 200},
        "paper": {"duration_ms": 2000, "n_currents": 80, "n_poisson": 400},
    },
}


class ParameterError(ValueError):
    """A notebook, profile or parameter that does not exist, or a value of the wrong type."""


def notebook_names():
    return sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def notebook_path(name):
    names = notebook_names()
    if name not in names:
        raise ParameterError(f"unknown notebook {name!r}; valid notebooks: {', '.join(names)}")
    return NOTEBOOK_DIR / f"{name}.ipynb"


def declared_parameters(name):
    """The names and default values of a notebook's ``parameters`` cell."""
    found = papermill.inspect_notebook(str(notebook_path(name)))
    return {key: ast.literal_eval(info["default"]) for key, info in found.items()}


def _coerce(notebook, key, value, default):
    """``value`` as the type of ``default``; strings from the command line are parsed first."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    kind = type(default)
    if default is None or isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ParameterError(f"{notebook}: parameter {key!r} must be {kind.__name__} (default {default!r}), "
                         f"got {value!r}")


def resolve(name, profile="smoke", overrides=None):
    """Full parameter set for ``name`` at ``profile``, with ``overrides`` applied and every value type-checked."""
    if profile not in PROFILE_NAMES:
        raise ParameterError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILE_NAMES)}")
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
