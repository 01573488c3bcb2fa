"""Gives the memory that malloc keeps free back to the operating system, so long runs stay flat.

glibc's malloc keeps freed memory in its arenas for reuse. A load generator churns through buffers
of every size from several threads (SSH packets, 256 kB SFTP documents, Parquet batches), and what
malloc keeps free grows with the run. Measured at the reference farm's knee (80 sessions), the Locust
process held 52 MB in use throughout while the free memory malloc kept rose from 7 to 30 MB in four
minutes; Python's objects and traced heap stayed flat. ``malloc_trim(0)`` returns the free pages
(``madvise``) without moving anything still in use. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

RELEASE_EVERY_S = 60.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # ctypes releases the GIL for the call
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Return malloc's free pages to the system; True if any were (False also where unsupported)."""
    return bool(_TRIM(0)) if _TRIM is not None else False
