"""glibc's malloc told to keep the memory it frees, for the maskdla commands.

A Mask R-CNN step on the CPU allocates and frees tensors of tens of MB again and again.
glibc serves blocks above its mmap threshold (128 KiB, raised dynamically to at most
32 MiB) with ``mmap`` and gives them back with ``munmap`` when freed, and it trims the top
of the heap when 128 KiB are free there: each step then maps, faults in and unmaps the
same memory again, and the kernel's page-fault time shows as system CPU time (a quarter
of ``maskdla predict``'s CPU time on the 2-core AMD EPYC, docs/benchmarks.md). With the
three settings below freed memory stays in the process and is reused.

:func:`keep_freed_memory` applies them through ``mallopt`` (what the ``MALLOC_*_``
environment variables would do at start-up); every ``maskdla`` command calls it first
(:func:`maskdla.cli.run_main`), DataLoader workers inherit it. Library users can call it
themselves. The cost is memory: the process keeps its peak heap instead of returning it.
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Optional

__all__ = ["OPT_OUT", "SETTINGS", "keep_freed_memory"]

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
#: (parameter, value, fallback or None): blocks up to 1 GiB from the heap (glibc before
#: 2.36 refuses more than 32 MiB: the fallback), never trim its top, grow it by 1 GiB
SETTINGS = ((M_MMAP_THRESHOLD, 1 << 30, 32 << 20),
            (M_TRIM_THRESHOLD, 2 ** 31 - 1, None),
            (M_TOP_PAD, 1 << 30, None))
#: ``MASKDLA_MALLOC=default`` leaves glibc's defaults; so do the user's own settings
OPT_OUT = "MASKDLA_MALLOC"
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "GLIBC_TUNABLES")


def _glibc() -> Optional[ctypes.CDLL]:
    """The C library this process already runs on (no search: ctypes.util.find_library
    would start ldconfig on every command), or None where it has no mallopt (musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` to this process's glibc malloc; True when applied.

    Nothing is changed (False) off Linux/glibc, with ``MASKDLA_MALLOC=default``, or when
    the environment already sets one of glibc's own malloc variables (the user's choice
    wins).
    """
    if os.environ.get(OPT_OUT) == "default" or any(name in os.environ
                                                   for name in _USER_SETTINGS):
        return False
    libc = _glibc()
    if libc is None:
        return False
    applied = True
    for parameter, value, fallback in SETTINGS:
        if not libc.mallopt(parameter, value):
            applied &= bool(fallback is not None and libc.mallopt(parameter, fallback))
    return applied
