"""The readout and the network: leaky filter by hand, seeded streams, credit rules never change values."""
import math

import pytest
import torch

from rnnnotes import credit
from rnnnotes.cells import ALIF, RateRNN
from rnnnotes.model import Network, Readout
from rnnnotes.seeding import generator


def test_readout_filter_is_the_leaky_recursion():
    readout = Readout(3, 2, tau_out=4.0, seed=0).double()
    z = torch.rand(6, 2, 3, dtype=torch.float64)
    kappa = math.exp(-1 / 4)
    psp = torch.zeros(2, 3, dtype=torch.float64)
    out = readout(z)
    for t in range(6):
        psp = kappa * psp + (1 - kappa) * z[t]
        torch.testing.assert_close(out[t], psp @ readout.w_out + readout.b_out, rtol=1e-14, atol=1e-14)
    unfiltered = Readout(3, 2, seed=0, bias=False).double()
    torch.testing.assert_close(unfiltered(z), z @ unfiltered.w_out, rtol=0, atol=0)


def test_readout_init_is_glorot_uniform_and_seeded():
    w = Readout(200, 50, seed=3).w_out
    limit = math.sqrt(6 / 250)
    assert w.abs().max() <= limit and w.abs().max() > 0.95 * limit
    assert torch.equal(w, Readout(200, 50, seed=3).w_out)
    assert not torch.equal(w, Readout(200, 50, seed=4).w_out)


def test_cell_and_readout_of_one_seed_draw_from_their_own_streams():
    cell, readout = RateRNN(4, 3, seed=0), Readout(3, 2, seed=0)
    expected_in = torch.randn(4, 3, generator=generator(0, "weights")) * math.sqrt(1 / 4)
    torch.testing.assert_close(cell.w_in.detach(), expected_in, rtol=0, atol=0)
    expected_out = (torch.rand(3, 2, generator=generator(0, "readout")) * 2 - 1) * math.sqrt(6 / 5)
    torch.testing.assert_close(readout.w_out.detach(), expected_out, rtol=0, atol=0)
    assert Readout(3, 2).seed is not None  # seed=None draws one and records it


def test_network_rules_change_gradients_never_values():
    net = Network(ALIF(3, 3, 3, seed=1), Readout(6, 2, tau_out=5.0, seed=1)).double()
    x = (torch.rand(30, 2, 3) < 0.3).double()
    reference = net(x)
    for rule in (credit.make_rule("eprop", net.cell), credit.make_rule("mdgl", net.cell, n_types=2),
                 credit.make_rule("eprop", net.cell, feedback="random", n_out=2)):
        result = net(x, rule=rule)
        assert torch.equal(result.out, reference.out) and torch.equal(result.hidden.z, reference.hidden.z)


def test_mismatched_readout_is_named():
    with pytest.raises(ValueError, match="readout expects 5 neurons, the cell has 4"):
        Network(RateRNN(2, 4), Readout(5, 2))
    with pytest.raises(ValueError, match="tau_out"):
        Readout(4, 2, tau_out=-1.0)
