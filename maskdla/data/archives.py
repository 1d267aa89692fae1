"""ZIP archives as data: an eScriptorium export (ALTO or PAGE with its images), or a
dataset folder zipped, given where a folder is expected (``--data``, ``convert``).

    folder = data_folder("export.zip")   # the extracted folder; a folder is itself

The archive is extracted once into the maskdla cache (``$MASKDLA_CACHE`` or
``~/.cache/maskdla``), into ``zip-<sha256 of the archive>``: a resumed run, or a second
command on the same archive, sees the very same files. The folder only ever appears
complete (extracted into a temporary sibling, then renamed). Member names that would
land outside it (absolute, ``..``, a drive) refuse the whole archive before anything is
extracted.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import List

from maskdla.data.reading import PathLike
from maskdla.data.synthetic import cache_root
from maskdla.errors import InputError

__all__ = ["is_zip", "data_folder", "extract_zip"]

#: read in blocks of this many bytes while hashing an archive
HASH_BLOCK = 1 << 20


def is_zip(path: PathLike) -> bool:
    """True for an existing file named ``*.zip`` (any case)."""
    path = Path(path)
    return path.suffix.lower() == ".zip" and path.is_file()


def data_folder(path: PathLike) -> Path:
    """The folder ``path`` stands for: a ZIP's extracted folder (:func:`extract_zip`;
    its one top-level folder when it holds nothing else, as ``zip -r DATA.zip DATA``
    makes), anything else as given."""
    if not is_zip(path):
        return Path(path)
    folder = extract_zip(path)
    entries = [entry for entry in folder.iterdir() if entry.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def _sha256(path: Path) -> str:
    """The archive's hash; once per process for an unchanged file (a run resolves its
    ``--data`` for each split, and an export may hold gigabytes of images)."""
    stat = path.stat()
    return _sha256_of(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked_members(archive: zipfile.ZipFile, path: Path) -> List[zipfile.ZipInfo]:
    """The archive's members, every name checked to stay inside the folder."""
    members = archive.infolist()
    for member in members:
        name = member.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if (name.startswith("/") or ".." in parts or (parts and ":" in parts[0])):
            raise InputError(f"unsafe member {member.filename!r} (an absolute path or one "
                             "with '..' would be written outside the extracted folder); "
                             "refusing the archive", path)
    return members


def extract_zip(path: PathLike) -> Path:
    """Extract the ZIP ``path`` into ``cache_root() / zip-<sha256>`` unless it is there
    already; returns that folder. Two processes extracting at once both succeed (the
    second one's copy is discarded).

    Raises:
        InputError: not a readable ZIP, or a member whose name leaves the folder.
    """
    path = Path(path)
    try:
        folder = cache_root() / f"zip-{_sha256(path)}"
    except OSError as error:
        raise InputError(f"cannot read the archive ({error.strerror or error})", path) from None
    if folder.is_dir():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    except OSError as error:
        raise InputError(f"cannot extract into the cache ({error.strerror or error}; set "
                         "MASKDLA_CACHE to a writable folder)", folder.parent) from None
    try:
        with zipfile.ZipFile(path) as archive:
            for member in _checked_members(archive, path):
                archive.extract(member, staging)
        try:
            os.rename(staging, folder)
        except OSError:
            if not folder.is_dir():  # else another process won the race: same files
                raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise InputError(f"not a ZIP archive, or a damaged one ({error})", path) from None
    except OSError as error:
        raise InputError(f"cannot extract ({error.strerror or error})", path) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
