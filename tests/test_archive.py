"""Packing the results directory into one archive and unpacking it elsewhere."""
import io
import json
import tarfile

import pytest

from rnnnotes import __version__, archive, profiles, store
from conftest import cli


def fake_results(root):
    (root / "03_smnist" / "abc" / "lsnn").mkdir(parents=True)
    (root / "03_smnist" / "abc" / "lsnn" / "metrics.csv").write_text("step,loss\n1,2.3\n")
    (root / "03_smnist" / "abc" / "lsnn" / "model.pt").write_bytes(bytes(range(256)))
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_pack_then_unpack_restores_every_file(tmp_path):
    files = fake_results(tmp_path / "cluster")
    assert archive.pack(tmp_path / "runs.tar.gz", tmp_path / "cluster") == len(files) == 2
    manifest = archive.unpack(tmp_path / "runs.tar.gz", tmp_path / "laptop")
    assert manifest == {"version": __version__, "source": store.source_hash(), "files": 2}
    restored = {p.relative_to(tmp_path / "laptop"): p.read_bytes() for p in (tmp_path / "laptop").rglob("*")
                if p.is_file()}
    assert restored == files


def test_an_archive_of_another_version_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "old.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in ((archive.MANIFEST, json.dumps({"version": "0.0.1", "source": "x", "files": 1})),
                           ("03_smnist/run.csv", "a")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data.encode()))
    with pytest.raises(profiles.ParameterError, match="rnnnotes 0.0.1, this is"):
        archive.unpack(path, tmp_path / "results")
    assert not (tmp_path / "results").exists()
    (tmp_path / "plain.txt").write_text("not an archive")
    with pytest.raises(profiles.ParameterError, match="cannot read .* as a results archive"):
        archive.unpack(tmp_path / "plain.txt", tmp_path / "results")


def test_the_command_line_packs_and_unpacks(tmp_path):
    fake_results(tmp_path / "a")
    packed = cli("results", "pack", str(tmp_path / "r.tar.gz"), env={"RNNNOTES_RESULTS": str(tmp_path / "a")})
    assert packed.returncode == 0 and "packed 2 files" in packed.stdout
    unpacked = cli("results", "unpack", str(tmp_path / "r.tar.gz"), env={"RNNNOTES_RESULTS": str(tmp_path / "b")})
    assert unpacked.returncode == 0 and "matches" in unpacked.stdout
    assert (tmp_path / "b" / "03_smnist" / "abc" / "lsnn" / "metrics.csv").exists()
    missing = cli("results", "pack", str(tmp_path / "x.tar.gz"), env={"RNNNOTES_RESULTS": str(tmp_path / "none")})
    assert missing.returncode == 2 and "no results directory" in missing.stderr
