"""Reading and writing the small files of a run: JSON in with one clear error, any file
out atomically (temp file in the same folder, then rename), so that a crash or a bad
input never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

from maskdla.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


def write_atomic(path: PathLike, write: Callable[[BinaryIO], Any], *, durable: bool = False) -> None:
    """Write ``path`` through a temporary file in the same folder and os.replace, so readers
    never see a half-written file: ``write(file)`` fills the binary temporary file.

    ``durable``: fsync the file before the rename, so that the new contents survive a power
    cut, not only a crash of the process (checkpoints). The file gets the usual permissions
    (umask), unlike a mkstemp file. A folder that cannot be created or written is an
    InputError naming the path.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "xb") as file:
            write(file)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise InputError(f"cannot write: {error.strerror or error}", path) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: PathLike, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda file: file.write(data), durable=durable)


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
