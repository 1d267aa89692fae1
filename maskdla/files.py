"""Reading and writing the small files of a run: JSON in with one clear error, any file
out atomically (temp file in the same folder, then rename), so that a crash or a bad
input never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
import re
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence, Tuple, Union

from maskdla.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


#: the names of write_atomic's temporary files (and check_output_folder's probes):
#: ``.NAME.<32 hex digits>.tmp``
TEMPORARY_NAME = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
#: a temporary file younger than this may be another process's write in progress (they
#: last milliseconds); an older one was left by a killed run
STALE_AFTER_S = 60.0


def temporary_path(path: Path) -> Path:
    """Where :func:`write_atomic` writes ``path`` first (the same folder, a hidden name)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def remove_stale_temporaries(folder: PathLike, min_age_s: float = STALE_AFTER_S) -> int:
    """Remove the temporary files of maskdla's naming (:data:`TEMPORARY_NAME`) that a
    killed run left anywhere below ``folder``, only those older than ``min_age_s`` (a
    younger one may be another run's write in progress). Returns how many went."""
    now, removed = time.time(), 0
    for candidate in Path(folder).rglob(".*.tmp"):
        try:
            if (TEMPORARY_NAME.match(candidate.name) and candidate.is_file()
                    and not candidate.is_symlink()
                    and now - candidate.stat().st_mtime >= min_age_s):
                candidate.unlink()
                removed += 1
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
    return removed


def write_atomic(path: PathLike, write: Callable[[BinaryIO], Any], *, durable: bool = False) -> None:
    """Write ``path`` through a temporary file in the same folder and os.replace, so readers
    never see a half-written file: ``write(file)`` fills the binary temporary file.

    ``durable``: fsync the file before the rename, so that the new contents survive a power
    cut, not only a crash of the process (checkpoints). The file gets the usual permissions
    (umask), unlike a mkstemp file. A folder that cannot be created or written is an
    InputError naming the path.
    """
    path = Path(path)
    temporary = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a folder should be, a read-only disk...
        in_the_way = next((folder for folder in (path.parent, *path.parent.parents)
                           if folder.exists() and not folder.is_dir()), None)
        why = (f"{in_the_way} is a file, not a folder" if in_the_way is not None
               else error.strerror or str(error))
        raise InputError(f"cannot create its folder: {why}", path) from None
    try:
        with open(temporary, "xb") as file:
            write(file)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _remove_quietly(temporary)
        raise InputError(f"cannot write: {error.strerror or error}", path) from None
    except BaseException:
        _remove_quietly(temporary)
        raise


def _remove_quietly(temporary: Path) -> None:
    """Remove a temporary file that may not exist; on a read-only disk unlink fails with
    EROFS even then, and that must not hide the error being reported."""
    try:
        temporary.unlink(missing_ok=True)
    except OSError:
        pass


def check_output_folder(path: PathLike, flag: str = "--out") -> None:
    """InputError naming ``path`` and ``flag`` unless files can be written in the folder
    ``path``, or it can be created: checked before work starts, so that a bad output
    folder is one line, not a traceback minutes later. Creates nothing (a probe file in
    an existing folder comes and goes)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag}: this is a file, not a folder", path)
    if path.is_dir():
        probe = path / f".maskdla-probe.{uuid.uuid4().hex}.tmp"
        try:
            probe.open("xb").close()
            probe.unlink()
        except OSError as error:
            raise InputError(f"{flag}: cannot write in this folder "
                             f"({error.strerror or error})", path) from None
        return
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir():
        raise InputError(f"{flag}: cannot create the folder: {existing} is a file", path)
    if not os.access(existing, os.W_OK | os.X_OK):  # also false on a read-only disk
        raise InputError(f"{flag}: cannot create the folder: {existing} is not writable",
                         path)


def write_bytes_atomic(path: PathLike, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda file: file.write(data), durable=durable)


def write_zip_atomic(path: PathLike, members: Sequence[Tuple[str, Path]]) -> None:
    """A ZIP at ``path`` (deflated) holding each ``(member name, file)`` of ``members``,
    written atomically (:func:`write_atomic`): never a half-written archive."""
    def fill(file: BinaryIO) -> None:
        with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, source in members:
                archive.write(source, arcname=name)

    write_atomic(path, fill)


def write_json_atomic(path: PathLike, data: Any) -> None:
    """``data`` as indented JSON (UTF-8, trailing newline), written atomically."""
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def read_json(path: PathLike, what: str = "file") -> Any:
    """The JSON value in ``path``; InputError naming the file (and ``what`` it should be)
    when it is missing, unreadable or not valid JSON."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        raise InputError(f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {what}: {getattr(error, 'strerror', None) or error}", path) from None
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON ({error})", path) from None
