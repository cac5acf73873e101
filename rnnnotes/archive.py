"""The results directory as one archive: pack runs made on one machine (a cluster, a GPU) and unpack them where the
book is built, which then reuses them (a run's key holds the package's source hash, so only runs of the same code
are reused)."""
import io
import json
import tarfile
from pathlib import Path

from . import __version__, profiles, store

MANIFEST = "rnnnotes-archive.json"


def pack(archive, root=None):
    """Write every file under the results directory ``root`` (default :func:`~rnnnotes.store.results_root`) into the
    ``.tar.gz`` ``archive``, with a manifest of the package version and source hash; returns the number of files."""
    root = Path(root or store.results_root())
    if not root.is_dir():
        raise profiles.ParameterError(f"no results directory at {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    manifest = json.dumps({"version": __version__, "source": store.source_hash(), "files": len(files)}).encode()
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for path in files:
            tar.add(path, arcname=str(path.relative_to(root)))
    return len(files)


def unpack(archive, root=None):
    """Extract ``archive`` (made by :func:`pack`) into the results directory; returns its manifest. An archive of
    another package version, or without a manifest, raises ``ParameterError`` before anything is written."""
    root = Path(root or store.results_root())
    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as err:
        raise profiles.ParameterError(f"cannot read {archive} as a results archive: {err}") from None
    with tar:
        try:
            manifest = json.load(tar.extractfile(MANIFEST))
        except KeyError:
            raise profiles.ParameterError(f"{archive} is not a results archive (no {MANIFEST})") from None
        if manifest.get("version") != __version__:
            raise profiles.ParameterError(f"{archive} holds results of rnnnotes {manifest.get('version')}, this is "
                                          f"{__version__}; unpack it with that version")
        members = [m for m in tar.getmembers() if m.name != MANIFEST]
        root.mkdir(parents=True, exist_ok=True)
        tar.extractall(root, members=members, filter="data")
    return manifest
