"""Shared plumbing of the command-line entry points (``python -m maskdla.X``)."""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from typing import Callable, Optional, Sequence

from maskdla.allocator import keep_freed_memory
from maskdla.errors import InputError

#: Exit code for bad input (files, flags): argparse uses 2 for bad flags, we match it.
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE, the code of a shell tool whose reader closed the pipe
EXIT_BROKEN_PIPE = 141


def run_main(main: Callable[[Optional[Sequence[str]]], Optional[int]],
             argv: Optional[Sequence[str]] = None) -> None:
    """Run a CLI ``main(argv) -> exit code`` and exit with its code.

    :class:`InputError` becomes one line ``maskdla: error: ...`` on stderr and exit code 2,
    Ctrl-C exit code 130, a closed pipe on stdout 141; none prints a traceback. Anything else is a bug and keeps its
    traceback. The libraries' warnings about the input (:func:`quiet_library_warnings`)
    are not shown: maskdla says what it did with such input in its own words. First,
    glibc's malloc is told to keep freed memory (:func:`maskdla.allocator.keep_freed_memory`;
    ``MASKDLA_MALLOC=default`` leaves it alone).
    """
    keep_freed_memory()
    try:
        with warnings.catch_warnings():
            quiet_library_warnings()
            code = main(argv)
    except InputError as error:
        print(f"maskdla: error: {one_line(str(error))}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("maskdla: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BrokenPipeError:  # `maskdla models | head`: the reader left, as a shell tool does
        # the interpreter would flush stdout again at exit and print the error there
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    sys.exit(code or 0)


def quiet_library_warnings() -> None:
    """Ignore the warnings that libraries print beside maskdla's own lines on bad input:
    shapely's RuntimeWarning on an outline it cannot compute with (overflowing coordinates;
    the reader repairs or skips the region and notes it), and PIL's
    DecompressionBombWarning on a page over its pixel limit (maskdla reads it; twice the
    limit is an error, one line)."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"shapely(\.|$)")
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def one_line(message: str) -> str:
    """The message itself when an InputError crossed a DataLoader worker: PyTorch re-raises
    it with the worker's whole traceback as its text, whose last line is the original."""
    if message.startswith("Caught InputError"):
        last = [line for line in message.splitlines() if line.strip()][-1]
        return last.split("InputError: ", 1)[-1]
    return message


def _integer_at_least(text: str, minimum: int, wanted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _integer_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer_at_least(text, 0, "an integer >= 0")


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value
