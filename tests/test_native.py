"""The compiled CPU spiking loops (rnnnotes.native): built and taken where a compiler exists, a warning and the
Python loops where it does not, and a build lock left by a killed build does not hang the next one. That they
compute what the Python loops and the plain path compute is tested in test_fused.py, for both loops."""
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from rnnnotes import native
from rnnnotes.cells import ALIF

HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None


def _layer_output(x):
    cell = ALIF(5, 3, 4, n_ref=2, n_delay=2, thr=0.05, seed=1)
    out = cell(x, fast=True)
    out.z.sum().backward()
    return out.z.detach(), cell.w_rec.grad


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_the_compiled_loops_are_built_and_taken(monkeypatch):
    loops = native.spiking_loops(torch.zeros(1))
    assert loops is not None
    calls = []

    class Counting:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(loops, name)

    monkeypatch.setitem(native._loaded, "loops", Counting())
    x = (torch.rand(20, 2, 5, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    _layer_output(x)
    assert calls == ["forward", "backward"]
    monkeypatch.setenv("RNNNOTES_NATIVE", "0")
    calls.clear()
    _layer_output(x)
    assert calls == []
    assert native.spiking_loops(torch.zeros(1, device="meta")) is None  # not a CPU tensor
    assert native.spiking_loops(torch.zeros(1, dtype=torch.bfloat16)) is None  # a dtype it is not compiled for
    cell = ALIF(5, 3, 4, n_ref=2, n_delay=2, thr=0.05, seed=1).to(torch.bfloat16)
    assert cell(x.to(torch.bfloat16), fast=True).z.dtype == torch.bfloat16  # which the Python loops run


def test_a_failed_build_warns_once_and_the_python_loops_run(monkeypatch):
    x = (torch.rand(20, 2, 5, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    monkeypatch.setenv("RNNNOTES_NATIVE", "0")
    expected = _layer_output(x)
    monkeypatch.setenv("RNNNOTES_NATIVE", "1")
    monkeypatch.setattr(native, "_loaded", {})

    def failing_build():
        raise RuntimeError("Error building extension 'spiking_loops'\nmore lines")

    monkeypatch.setattr(native, "_build", failing_build)
    with pytest.warns(UserWarning, match="Python loops run: RuntimeError: Error building extension 'spiking_loops'$"):
        got = _layer_output(x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.spiking_loops(torch.zeros(1)) is None  # no second warning


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
def test_a_lock_file_left_by_a_killed_build_does_not_hang_the_next():
    """torch's builder waits for as long as its lock file exists; a build killed between creating and removing it
    leaves the file behind. A fresh process must still load the extension."""
    native.spiking_loops(torch.zeros(1))  # built (by make setup, or now)
    (native.build_directory() / "lock").touch()
    code = "import torch; from rnnnotes import native; assert native.spiking_loops(torch.zeros(1)) is not None"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env={**os.environ, "RNNNOTES_NATIVE": "1"})
    assert not (native.build_directory() / "lock").exists()
