"""The one exception type for bad user input.

Every reader, loader and CLI raises :class:`InputError` for input it cannot use (broken
XML, a missing image, a wrong checkpoint, a bad flag value). The message names the file
(or flag) and the problem in one line; :func:`maskdla.cli.run_main` turns it into that
line on stderr and exit code 2, with no traceback.
"""
from __future__ import annotations

import re
from os import PathLike
from typing import Optional, Union

#: terminal escape codes (colour, bold) some libraries put in their messages
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: torch.load(weights_only=True) refusing a global: the file's pickle would call code
UNPICKLES_CODE = re.compile(r"\bGLOBAL\b|Unsupported global", re.IGNORECASE)
SENTENCE_END = re.compile(r"(?<=[\w)`'\"])\.\s+")


class InputError(ValueError):
    """Bad user input: a file or value maskdla cannot use.

    Args:
        message: what is wrong, in one line.
        path: the file concerned, prefixed to the message when given.
    """

    def __init__(self, message: str, path: Optional[Union[str, PathLike]] = None):
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


def error_line(error: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first meaningful sentence, for an InputError:
    terminal escape codes stripped, and of torch.load's page of ``weights_only`` advice
    only the WeightsUnpickler error it wraps (``Unsupported operand 57``)."""
    text = ANSI_ESCAPE.sub("", str(error))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # the first sentence: a full stop right after a word (torch's "] . " is no sentence end)
    line = SENTENCE_END.split(lines[0], 1)[0].rstrip(".").replace("] . ", "] ") if lines else ""
    return f"{type(error).__name__}: {line[:limit]}" if line else type(error).__name__


def torch_load_problem(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line: a pickle that
    would run code (refused on purpose), or no PyTorch file at all (random bytes, another
    format, a truncated or corrupted download)."""
    if UNPICKLES_CODE.search(str(error)):
        return ("it holds Python objects other than tensors and plain data; refusing to "
                f"unpickle them ({error_line(error)})")
    return f"not a PyTorch file, or a corrupted or truncated one ({error_line(error)})"
