"""Denormal flushing: never on import, on inside a block (and inside ``fit``), the previous setting restored."""
import subprocess
import sys
from typing import NamedTuple

import pytest
import torch
from torch import nn

from rnnnotes import numerics
from rnnnotes.train import FitConfig, Training, fit


@pytest.fixture
def setting():
    """Set flushing for a test and put the previous setting back afterwards."""
    before = numerics.flushing_denormal()
    if not torch.set_flush_denormal(before):
        pytest.skip("this CPU cannot flush denormals")
    yield torch.set_flush_denormal
    torch.set_flush_denormal(before)


def test_importing_the_package_changes_no_process_state():
    code = ("import torch, rnnnotes, rnnnotes.train, rnnnotes.runner\n"
            "print((torch.tensor([2.2250738585072014e-308], dtype=torch.float64) / 4).item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) == 2.2250738585072014e-308 / 4 > 0


@pytest.mark.parametrize("before", [False, True])
def test_the_block_flushes_and_restores_the_previous_setting(setting, before):
    setting(before)
    assert numerics.flushing_denormal() is before
    with numerics.flush_denormal():
        assert numerics.flushing_denormal()
    assert numerics.flushing_denormal() is before
    with pytest.raises(KeyError):
        with numerics.flush_denormal():
            raise KeyError("inside")
    assert numerics.flushing_denormal() is before


class _Batch(NamedTuple):
    x: torch.Tensor


def test_fit_flushes_while_it_runs_and_restores_afterwards(setting):
    setting(False)
    model, seen = nn.Linear(1, 1), []

    def objective(model, batch, rule):
        seen.append(numerics.flushing_denormal())
        loss = model(batch.x).pow(2).mean()
        return loss, {"loss": loss.item()}
    fit(Training(model, lambda step: _Batch(torch.ones(2, 1)), objective, torch.optim.SGD(model.parameters(), lr=0.1),
                 FitConfig(steps=2, progress=False)))
    assert seen == [True, True] and not numerics.flushing_denormal()
