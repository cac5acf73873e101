"""The per-step work of the fused spiking loops compiled for the CPU (``spiking_loops.cpp``).

One step of :func:`rnnnotes.fused._spiking_forward` or of its backward is then one matmul and one vectorised pass
over the neurons, instead of some ten tensor operations of a few microseconds each. ``torch.utils.cpp_extension``
compiles it (with a C++ compiler and ninja, which requirements.txt installs) on first use, in about 40 s, into
``$XDG_CACHE_HOME/rnnnotes/`` (default ``~/.cache/rnnnotes/``) under the hash of its source, and loads it from there
afterwards; ``make setup`` builds it. Where it cannot be built, one warning says why and the Python loops run.
``RNNNOTES_NATIVE=0`` in the environment switches it off.
"""
import contextlib
import fcntl
import hashlib
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("spiking_loops.cpp")
_loaded = {}


def build_directory():
    """Where the extension of the current source is compiled: one directory per source hash."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rnnnotes" / f"spiking_loops_{digest}"


def _build():
    """Compile (or load the compiled) extension. An exclusive ``flock`` (released by the kernel if the process
    dies) serialises builders, so a lock file that torch's builder left behind in a killed build is stale and
    removed."""
    from torch.utils.cpp_extension import load
    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    name = directory.name
    with open(os.open(directory / "rnnnotes.flock", os.O_RDONLY | os.O_CREAT, 0o644)) as lock:  # flock needs no write
        fcntl.flock(lock, fcntl.LOCK_EX)
        (directory / "lock").unlink(missing_ok=True)
        if not (directory / f"{name}.so").exists():
            print(f"rnnnotes: compiling the CPU spiking loops into {directory} (once, about 40 s)", file=sys.stderr)
            for old in directory.parent.glob("spiking_loops_*"):  # builds of other sources, unless being built
                if old != directory:
                    _remove_unless_locked(old)
        with _ninja_on_path():
            return load(name=name, sources=[str(SOURCE)], build_directory=str(directory), extra_cflags=["-O3"])


def _remove_unless_locked(directory):
    """Remove the build ``directory`` of another source unless a process is building it now."""
    try:
        with open(os.open(directory / "rnnnotes.flock", os.O_RDONLY | os.O_CREAT, 0o644)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(directory, ignore_errors=True)
    except OSError:  # locked by a build in progress, or not ours
        pass


@contextlib.contextmanager
def _ninja_on_path():
    """torch's builder runs ``ninja`` from ``PATH``; the one pip installs beside this Python counts too."""
    path = os.environ.get("PATH", "")
    if shutil.which("ninja") is None:
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
    try:
        yield
    finally:
        os.environ["PATH"] = path


def spiking_loops(like):
    """The compiled loops for tensors like ``like``, or ``None`` where the Python loops run: not a float32 or
    float64 CPU tensor, ``RNNNOTES_NATIVE=0``, or the extension could not be built (a warning, once per process)."""
    if (like.device.type != "cpu" or like.dtype not in (torch.float32, torch.float64)
            or os.environ.get("RNNNOTES_NATIVE", "1") == "0"):
        return None
    if "loops" not in _loaded:
        try:
            _loaded["loops"] = _build()
        except Exception as error:  # noqa: BLE001 -- any failure to compile or load means the Python loops
            warnings.warn(f"the compiled CPU spiking loops are unavailable, the Python loops run: "
                          f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            _loaded["loops"] = None
    return _loaded["loops"]


def rows(x):
    """``x`` with a contiguous last dimension, as the compiled loops read it (``None`` stays ``None``)."""
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


if __name__ == "__main__":  # `python -m rnnnotes.native` (make setup): build now; without a compiler, say so
    print("rnnnotes: compiled CPU spiking loops", "ready" if spiking_loops(torch.zeros(1)) else "unavailable")
