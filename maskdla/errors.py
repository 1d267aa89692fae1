"""The one exception type for bad user input.

Every reader, loader and CLI raises :class:`InputError` for input it cannot use (broken
XML, a missing image, a wrong checkpoint, a bad flag value). The message names the file
(or flag) and the problem in one line; :func:`maskdla.cli.run_main` turns it into that
line on stderr and exit code 2, with no traceback.
"""
from __future__ import annotations

from os import PathLike
from typing import Optional, Union


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
