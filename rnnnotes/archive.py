"""The results directory as one archive: pack runs made on one machine (a cluster, a GPU) and unpack them where the
book is built, which then reuses them (a run's key holds the package's source hash, so only runs of the same code
are reused)."""
import io
import json
import os
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from . import __version__, profiles, store

MANIFEST = "rnnnotes-archive.json"
UNPACKING = ".unpacking-"  # the prefix of an unpack's folder beside the results, left only if it was killed


def pack(archive, root=None):
    """Write every file under the results directory ``root`` (default :func:`~rnnnotes.store.results_root`) into the
    ``.tar.gz`` ``archive`` (a link as the file it names), with a manifest of the package version and source hash;
    returns the number of files."""
    root = Path(root or store.results_root())
    if not root.is_dir():
        raise profiles.ParameterError(f"no results directory at {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _unpacking(p.relative_to(root)))
    manifest = json.dumps({"version": __version__, "source": store.source_hash(), "files": len(files)}).encode()
    try:
        tar = tarfile.open(archive, "w:gz", dereference=True)  # links as the files they name: unpack takes no link
    except OSError as err:
        raise profiles.ParameterError(f"cannot write {archive}: {err.strerror}") from None
    with tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for path in files:
            tar.add(path, arcname=str(path.relative_to(root)))
    return len(files)


def _unpacking(path):
    """Whether ``path`` (relative to the results) lies in the folder of an unpack that was killed outright."""
    return path.parts[0].startswith(UNPACKING)


def _unreadable(archive, err):
    return profiles.ParameterError(f"cannot read {archive} as a results archive: {err}")


def _check(archive, member):
    """``ParameterError`` unless ``member`` is a plain file or folder inside the directory it is unpacked into."""
    path = PurePosixPath(member.name)
    if not (member.isreg() or member.isdir()) or path.is_absolute() or ".." in path.parts:
        raise profiles.ParameterError(f"refused {archive}: its member {member.name!r} is not a plain file or folder "
                                      f"inside the results directory; nothing was unpacked")


def unpack(archive, root=None):
    """Extract ``archive`` (made by :func:`pack`) into the results directory; returns its manifest. An archive of
    another package version, without a manifest, or with a member that is not a plain file or folder inside the
    results directory (a link, a ``..`` path) raises ``ParameterError`` before anything is written. Each file is
    extracted beside the results and renamed into place, the ``.json`` files (a run's ``result.json``, which marks
    it finished) last: an interrupted unpack leaves whole files or none."""
    root = Path(root or store.results_root())
    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as err:
        raise _unreadable(archive, err) from None
    with tar:
        try:
            members = tar.getmembers()  # reads every header: a truncated or corrupt archive fails here
            manifest = json.load(tar.extractfile(MANIFEST))
        except KeyError:
            raise profiles.ParameterError(f"{archive} is not a results archive (no {MANIFEST})") from None
        except (OSError, EOFError, zlib.error, tarfile.TarError, ValueError) as err:
            raise _unreadable(archive, err) from None
        if manifest.get("version") != __version__:
            raise profiles.ParameterError(f"{archive} holds results of rnnnotes {manifest.get('version')}, this is "
                                          f"{__version__}; unpack it with that version")
        members = [m for m in members if m.name != MANIFEST]
        for member in members:
            _check(archive, member)
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=UNPACKING, dir=root) as tmp:
            tar.extractall(tmp, members=members, filter="data")
            files = sorted((p for p in Path(tmp).rglob("*") if p.is_file()), key=lambda p: (p.suffix == ".json", p))
            for path in files:
                target = root / path.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    return manifest
