"""One seeding scheme: every random stream of a run is a generator named by ``(seed, *keys)``.

A stream is ``generator(seed, "weights")``, ``generator(seed, "data", "train", step)``,
``generator(seed, "deepr", step)``, ...: the 64-bit :func:`derive_seed` of a canonical encoding of the seed
and the keys initialises MT19937 through ``init_by_array``. torch's ``manual_seed`` keeps only the low 32 bits
of a seed, so 64-bit keys go into the generator's state directly; two streams share their draws only if
their 64-bit derived seeds collide (probability about ``n**2 / 2**65`` among ``n`` streams).
"""
import hashlib
import numbers
import secrets
import threading

import numpy as np
import torch

_STATE_WORDS = 24  # byte offset of MT19937's 624 words (each widened to uint64) in torch's CPU generator state
_N_WORDS = 624
_scratch = threading.local()  # per thread, a numpy MT19937 that only runs init_by_array; it is never drawn from


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _encode(item):
    """Type tag, 8-byte length and payload: ``("ab", "c")`` and ``("a", "bc")``, ``1`` and ``"1"`` differ."""
    if isinstance(item, str):
        tag, payload = b"s", item.encode("utf-8")
    elif isinstance(item, numbers.Integral) and not isinstance(item, bool):
        value = int(item)
        tag, payload = b"i", value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
    else:
        raise ValueError(f"keys must be integers or strings, got {item!r}")
    return tag + len(payload).to_bytes(8, "big") + payload


def derive_seed(seed, *keys):
    """``blake2b_64(encode(seed, *keys))``: the 64-bit seed of stream ``keys`` of run ``seed``.

    ``seed`` is an integer >= 0 of any size; ``keys`` are integers or strings. Distinct arguments give
    distinct encodings, hence independent-looking 64-bit values.
    """
    data = b"".join(_encode(item) for item in (_check_seed(seed), *keys))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=b"rnnnotes.seed").digest(), "little")


def _from_words(words, initial_seed):
    """A CPU generator whose MT19937 state is ``words`` (624 32-bit integers), about to regenerate them.

    torch's CPU state is a legacy struct: uint64 initial seed, int32 ``left``, int32 ``seeded``, uint64
    ``next``, then the 624 words as uint64 from byte 24, then the cached normal samples. A freshly seeded
    generator has ``left = 1`` and ``next = 0`` and no cached normal, so only the seed and the words change.
    """
    state = torch.Generator().manual_seed(0).get_state().numpy().copy()
    state[:8] = np.array([initial_seed], dtype=np.uint64).view(np.uint8)
    end = _STATE_WORDS + 8 * _N_WORDS
    state[_STATE_WORDS:end] = np.asarray(words, dtype=np.uint64).view(np.uint8)
    g = torch.Generator()
    g.set_state(torch.from_numpy(state))
    return g


def generator(seed, *keys):
    """A fresh CPU ``torch.Generator`` for stream ``keys`` of run ``seed``, seeded with all 64 bits of
    :func:`derive_seed`: MT19937 ``init_by_array([low 32 bits, high 32 bits])``; ``initial_seed()`` returns
    the derived seed."""
    derived = derive_seed(seed, *keys)
    if not hasattr(_scratch, "mt"):
        _scratch.mt = np.random.RandomState(0)  # building one costs ~0.2 ms of OS entropy; reseeding does not
    _scratch.mt.seed(np.array([derived & 0xFFFFFFFF, derived >> 32], dtype=np.uint32))  # all 624 words reset
    return _from_words(_scratch.mt.get_state()[1], derived)


def resolve_seed(seed):
    """``seed`` checked (an integer >= 0), or for ``None`` a fresh 31-bit seed from OS entropy to record."""
    return secrets.randbits(31) if seed is None else _check_seed(seed)
