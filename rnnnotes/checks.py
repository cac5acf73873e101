"""Argument checks that name the offending parameter."""
import math
import numbers


def require_positive(**values):
    """Raise ``ValueError`` naming the first argument that is not a finite number > 0."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def require_shape(name, tensor, shape):
    """Raise ``ValueError`` unless ``tensor.shape`` matches ``shape`` (``None`` matches any size)."""
    ok = tensor.dim() == len(shape) and all(s is None or s == t for s, t in zip(shape, tensor.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(tensor.shape)}")


def require_integer(**values):
    """Raise ``ValueError`` naming the first argument that is not an integer (bools excluded)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an integer, got {value!r}")


def require_count(**values):
    """Raise ``ValueError`` naming the first argument that is not an integer, then the first that is not > 0."""
    require_integer(**values)
    require_positive(**values)


def require_bool(**values):
    """Raise ``ValueError`` naming the first argument that is not ``True`` or ``False``."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")


def require_nonnegative(**values):
    """Raise ``ValueError`` naming the first argument that is not a finite number >= 0."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
