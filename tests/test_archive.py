"""Packing the results directory into one archive and unpacking it elsewhere."""
import io
import os
import json
import tarfile
from pathlib import Path

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
    run = Path("03_smnist/abc/lsnn")
    (tmp_path / "cluster" / run / "linked.pt").symlink_to("model.pt")  # links are packed as the files they name
    (tmp_path / "cluster" / f"{archive.UNPACKING}x7" / run).mkdir(parents=True)  # an unpack killed outright: left out
    (tmp_path / "cluster" / f"{archive.UNPACKING}x7" / run / "model.pt").write_bytes(b"half")
    os.link(tmp_path / "cluster" / run / "metrics.csv", tmp_path / "cluster" / run / "copy.csv")
    files[run / "linked.pt"], files[run / "copy.csv"] = files[run / "model.pt"], files[run / "metrics.csv"]
    assert archive.pack(tmp_path / "runs.tar.gz", tmp_path / "cluster") == len(files) == 4
    manifest = archive.unpack(tmp_path / "runs.tar.gz", tmp_path / "laptop")
    assert manifest == {"version": __version__, "source": store.source_hash(), "files": 4}
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


def archive_of(path, members):
    """A results archive of this version holding ``members``: ``(name, kind, link target)``, kind file/sym/link."""
    manifest = json.dumps({"version": __version__, "source": store.source_hash(), "files": len(members)}).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(archive.MANIFEST)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = 4
                tar.addfile(info, io.BytesIO(b"data"))
            else:
                info.type, info.linkname = (tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE), target
                tar.addfile(info)
    return path


@pytest.mark.parametrize("unsafe", [[("../escaped.txt", "file", None)], [("link", "sym", "/etc")],
                                    [("link", "sym", ".."), ("link/escaped.txt", "file", None)],
                                    [("hard", "link", "/etc/passwd")], [("/tmp/absolute.txt", "file", None)]])
def test_an_unsafe_archive_is_refused_in_one_line_before_anything_is_written(tmp_path, unsafe):
    path = archive_of(tmp_path / "evil.tar.gz", [("03_smnist/abc/run/ok.txt", "file", None), *unsafe])
    done = cli("results", "unpack", str(path), env={"RNNNOTES_RESULTS": str(tmp_path / "deep" / "results")})
    assert done.returncode == 2 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
    assert repr(unsafe[0][0]) in done.stderr
    assert not (tmp_path / "deep" / "results").exists() and not (tmp_path / "deep" / "escaped.txt").exists()


def test_packing_into_a_missing_directory_is_one_line(tmp_path):
    fake_results(tmp_path / "a")
    target = tmp_path / "no" / "such" / "r.tar.gz"
    done = cli("results", "pack", str(target), env={"RNNNOTES_RESULTS": str(tmp_path / "a")})
    assert done.returncode == 2 and done.stderr.splitlines() == [f"error: cannot write {target}: No such file or "
                                                                 f"directory"]


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("when", ["extracting", "moving into place"])
def test_an_interrupted_unpack_leaves_whole_files_or_none(tmp_path, monkeypatch, when):
    """Each file is extracted beside the results, then renamed into place, a run's ``result.json`` last: an
    interruption leaves no part of a file where a reader would take it for a finished one."""
    files = fake_results(tmp_path / "cluster")
    (tmp_path / "cluster" / "03_smnist" / "abc" / "lsnn" / "result.json").write_text('{"status": "finished"}')
    files[next(iter(files)).parent / "result.json"] = b'{"status": "finished"}'
    archive.pack(tmp_path / "runs.tar.gz", tmp_path / "cluster")
    if when == "extracting":
        real = tarfile.copyfileobj

        def copy(src, dst, length=None, *args, **kwargs):
            if length == 256:  # model.pt: half of it, then the process dies
                dst.write(src.read(128))
                raise Interrupted
            return real(src, dst, length, *args, **kwargs)
        monkeypatch.setattr(tarfile, "copyfileobj", copy)
    else:
        real, moved = os.replace, []

        def replace(src, dst):
            if moved:
                raise Interrupted
            moved.append(dst)
            return real(src, dst)
        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Interrupted):
        archive.unpack(tmp_path / "runs.tar.gz", tmp_path / "laptop")
    left = {p.relative_to(tmp_path / "laptop"): p.read_bytes() for p in (tmp_path / "laptop").rglob("*")
            if p.is_file()}
    assert all(files[name] == data for name, data in left.items()), "a part of a file is at its final path"
    assert len(left) == (0 if when == "extracting" else 1) and not any(p.name == "result.json" for p in left)
