"""The seeding scheme: torch's generator state layout, 64-bit streams, distinct keys, bad seeds."""
import numpy as np
import pytest
import torch

from rnnnotes import seeding

DRAWS = {
    "randn": lambda g: torch.randn(40, generator=g),  # the vectorised path (>= 16 values) ...
    "randn_small": lambda g: torch.randn(5, generator=g),  # ... and the scalar one with its cached sample
    "rand": lambda g: torch.rand(40, generator=g, dtype=torch.float64),
    "randint": lambda g: torch.randint(0, 2 ** 40, (20,), generator=g),
    "randperm": lambda g: torch.randperm(100, generator=g),
}


def draws(g):
    return [draw(g) for draw in DRAWS.values()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(draws(a), draws(b)))


@pytest.mark.parametrize("seed", [0, 1, 12345, 2 ** 31 + 7, 2 ** 32 - 1])
def test_state_words_at_byte_24_are_mt19937(seed):
    """Words from init_genrand(seed) written at byte 24 reproduce ``manual_seed(seed)``: the layout is right."""
    state = torch.Generator().manual_seed(seed).get_state().numpy()
    assert state.size == 5056
    assert state[:8].view(np.uint64)[0] == seed and state[8:12].view(np.int32)[0] == 1  # initial seed, left
    assert state[16:24].view(np.uint64)[0] == 0  # next
    words = np.random.RandomState(seed).get_state()[1]
    assert np.array_equal(state[24:24 + 8 * 624].view(np.uint64), words)
    rebuilt = seeding._from_words(words, seed)
    assert rebuilt.initial_seed() == seed
    assert same(rebuilt, torch.Generator().manual_seed(seed))


def test_numpy_array_seeding_is_init_by_array():
    """The first outputs of the reference ``mt19937ar.out``, key {0x123, 0x234, 0x345, 0x456}."""
    rs = np.random.RandomState(np.array([0x123, 0x234, 0x345, 0x456], dtype=np.uint32))
    assert rs.randint(0, 2 ** 32, size=5, dtype=np.uint32).tolist() == [
        1067595299, 955945823, 477289528, 4107218783, 4228976476]


def test_generator_is_seeded_with_all_64_bits_of_the_derived_seed():
    g = seeding.generator(0, "data", "train", 3)
    derived = seeding.derive_seed(0, "data", "train", 3)
    assert g.initial_seed() == derived and derived >= 2 ** 32 and g.device.type == "cpu"
    key = np.array([derived & 0xFFFFFFFF, derived >> 32], dtype=np.uint32)
    words = g.get_state().numpy()[24:24 + 8 * 624].view(np.uint64)
    assert np.array_equal(words, np.random.RandomState(key).get_state()[1])


def test_same_arguments_draw_the_same_and_every_key_matters():
    assert same(seeding.generator(0, "data", 1), seeding.generator(0, "data", 1))
    others = [seeding.generator(*args) for args in ((0, "data", 2), (1, "data", 1), (0, "deepr", 1), (0, "data"),
                                                    (0, "data", "1"), (2 ** 31, "data", 1), (2 ** 40, "data", 1))]
    reference = draws(seeding.generator(0, "data", 1))
    for g in others:
        assert not any(torch.equal(a, b) for a, b in zip(reference, draws(g)))


def test_derived_seeds_sharing_their_low_32_bits_give_different_streams():
    seen = {}
    for i in range(1 << 20):  # a birthday search: about 2**16 keys until two share their low 32 bits
        low = seeding.derive_seed(0, "collide", i) & 0xFFFFFFFF
        if low in seen:
            break
        seen[low] = i
    a, b = (0, "collide", seen[low]), (0, "collide", i)
    assert seeding.derive_seed(*a) != seeding.derive_seed(*b)
    assert same(torch.Generator().manual_seed(seeding.derive_seed(*a)),
                torch.Generator().manual_seed(seeding.derive_seed(*b))), "manual_seed keeps only 32 bits"
    assert not any(torch.equal(x, y) for x, y in zip(draws(seeding.generator(*a)), draws(seeding.generator(*b))))


def test_the_encoding_is_unambiguous():
    derive = seeding.derive_seed
    assert derive(0, "ab", "c") != derive(0, "a", "bc")
    assert derive(0, 1) != derive(0, "1")
    assert derive(0, "data") != derive(0, "data", "")
    assert derive(1, 2) != derive(12) and derive(0, -1) != derive(0, 255)
    assert derive(0, np.int64(5)) == derive(0, 5) and derive(np.uint32(3)) == derive(3)
    assert len({derive(seed, "data", step) for seed in range(16) for step in range(1000)}) == 16_000
    assert 0 <= derive(2 ** 70, "x") < 2 ** 64


@pytest.mark.parametrize("seed", [-1, 1.0, True, "0", None])
def test_bad_seeds_name_the_argument(seed):
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        seeding.derive_seed(seed, "data")
    with pytest.raises(ValueError, match="seed"):
        seeding.generator(seed)


@pytest.mark.parametrize("key", [1.5, True, None, b"x"])
def test_bad_keys_name_the_argument(key):
    with pytest.raises(ValueError, match="keys must be integers or strings"):
        seeding.derive_seed(0, key)


def test_resolve_seed_checks_or_draws_a_seed_to_record():
    assert seeding.resolve_seed(2 ** 31 + 1) == 2 ** 31 + 1 and type(seeding.resolve_seed(np.int64(4))) is int
    drawn = {seeding.resolve_seed(None) for _ in range(8)}
    assert all(isinstance(s, int) and 0 <= s < 2 ** 31 for s in drawn) and len(drawn) > 1
    with pytest.raises(ValueError, match="seed"):
        seeding.resolve_seed(-3)
