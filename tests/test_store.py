"""The results store: its root is a setting, run directories are keyed by parameters, writes are atomic."""
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from rnnnotes import store

WRITERS = {  # kind: (write, read back, (old value, as read back), (new value, as read back))
    "json": (store.write_json, store.read_json, ({"a": 1},) * 2, ({"a": 2, "b": [1.5]},) * 2),
    "torch": (store.save_torch, lambda p: store.load_torch(p)["w"].tolist(), ({"w": torch.zeros(3)}, [0.0] * 3),
              ({"w": torch.ones(3)}, [1.0] * 3)),
    "table": (store.save_table, lambda p: pd.read_csv(p).to_dict("list"), (pd.DataFrame({"x": [1, 2]}), {"x": [1, 2]}),
              (pd.DataFrame({"x": [3], "y": [0.5]}), {"x": [3], "y": [0.5]})),
}
INNER = {"json": (Path, "write_text"), "torch": (torch, "save"), "table": (pd.DataFrame, "to_csv")}


def test_results_root_is_a_setting_read_at_each_call(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNNOTES_RESULTS", str(tmp_path / "elsewhere"))
    assert store.results_root() == tmp_path / "elsewhere"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RNNNOTES_RESULTS", "")
    assert store.results_root() == tmp_path / "results"
    monkeypatch.delenv("RNNNOTES_RESULTS")
    assert store.results_root() == tmp_path / "results"


def test_run_dir_layout_and_params(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNNOTES_RESULTS", str(tmp_path))
    params = {"seed": 1, "lr": 0.1, "data": tmp_path / "mnist"}
    path = store.run_dir("02_store_recall", params, "rule=eprop")
    assert path.is_dir() and path.name == "rule=eprop" and path.parent.parent == tmp_path / "02_store_recall"
    key = path.parent.name
    assert len(key) == 12 and all(c in "0123456789abcdef" for c in key)
    assert store.read_json(path / "params.json") == {"seed": 1, "lr": 0.1, "data": str(tmp_path / "mnist")}
    assert store.run_dir("02_store_recall", dict(reversed(params.items())), "rule=eprop") == path, "order-free"
    assert store.run_dir("02_store_recall", {**params, "seed": 2}, "rule=eprop").parent != path.parent
    assert store.run_dir("02_store_recall", params) == path.parent / "run"


@pytest.mark.parametrize("kind", WRITERS)
def test_writes_replace_the_file_and_leave_no_temporary(tmp_path, kind):
    write, read, (old, old_read), (new, new_read) = WRITERS[kind]
    path = tmp_path / f"out.{kind}"
    write(path, old)
    assert read(path) == old_read
    write(path, new)
    assert read(path) == new_read
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("kind", WRITERS)
def test_a_write_that_fails_midway_keeps_the_previous_file(tmp_path, monkeypatch, kind):
    write, read, (old, old_read), (new, _) = WRITERS[kind]
    path = tmp_path / f"out.{kind}"
    write(path, old)

    def fail_midway(*args, **kwargs):
        tmp = next(Path(a) for a in args if isinstance(a, (str, Path)) and ".tmp" in str(a))
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_bytes(b"half a fi")  # the real writer is patched, so this is plain file I/O
        raise OSError("disk full")
    monkeypatch.setattr(*INNER[kind], fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write(path, new)
    monkeypatch.undo()
    assert read(path) == old_read
    assert os.listdir(tmp_path) == [path.name], "the half-written temporary is removed"
