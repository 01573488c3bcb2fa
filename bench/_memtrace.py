"""Locust plugin for ``bench_endurance.py --trace DIR``: where the Locust process's memory goes.

Loaded as a second locustfile (``-f homeoffice.py,bench/_memtrace.py``) so the harness itself carries
no diagnostics. Every ``GATELOAD_MEMTRACE_INTERVAL`` seconds (default 60) it appends one line to
``DIR/memory.jsonl``: resident memory by kind of mapping (the heap, anonymous mappings such as malloc
arenas and thread stacks, files), glibc malloc's memory in use and kept free (mallinfo2), the bytes
held by pyarrow's memory pool, live Python objects, and, with ``GATELOAD_MEMTRACE_FRAMES`` > 0, the
Python heap traced by tracemalloc, with a snapshot ``DIR/snap-NNN.pickle`` that ``bench_endurance.py``
compares (first after the warm-up with the last).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import time
import tracemalloc
from pathlib import Path

import gevent
from locust import events

OUT = os.environ.get("GATELOAD_MEMTRACE_DIR")
INTERVAL = float(os.environ.get("GATELOAD_MEMTRACE_INTERVAL", "60"))
FRAMES = int(os.environ.get("GATELOAD_MEMTRACE_FRAMES", "0"))
LIBC = ctypes.CDLL("libc.so.6")


MALLINFO2 = (
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2]


LIBC.mallinfo2.restype = _Mallinfo2


def malloc_kb() -> dict[str, int]:
    """glibc malloc over all arenas, kB: taken from the system, in use, free but kept, mmapped."""
    m = LIBC.mallinfo2()
    return {
        "system": m.arena // 1024,
        "in_use": m.uordblks // 1024,
        "free": m.fordblks // 1024,
        "mmapped": m.hblkhd // 1024,
    }


def resident_kb_by_mapping() -> dict[str, int]:
    """Rss of this process in kB, summed by mapping: [heap], anonymous, [stack], files."""
    totals: dict[str, int] = {}
    name = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            path = head[5] if len(head) > 5 else ""
            name = path if path.startswith("[") else ("anonymous" if not path else "files")
        elif head[0] == "Rss:":
            totals[name] = totals.get(name, 0) + int(head[1])
    return totals


def _sample(out: Path, i: int) -> None:
    gc.collect()
    row = {"t": time.time(), "rss_kb": resident_kb_by_mapping(), "objects": len(gc.get_objects())}
    row["malloc_kb"] = malloc_kb()
    try:
        import pyarrow as pa

        pool = pa.default_memory_pool()
        row["arrow"] = {
            "backend": pool.backend_name,
            "bytes": pool.bytes_allocated(),
            "peak": pool.max_memory(),
        }
    except ImportError:
        pass
    if FRAMES:
        row["traced"] = tracemalloc.get_traced_memory()[0]
        tracemalloc.take_snapshot().dump(str(out / f"snap-{i:03d}.pickle"))
    with open(out / "memory.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _loop(out: Path) -> None:
    for i in range(10_000):  # bounded; the run ends long before
        gevent.sleep(INTERVAL)
        _sample(out, i)


@events.init.add_listener
def _start(environment, **_kw) -> None:
    if OUT:
        out = Path(OUT)
        out.mkdir(parents=True, exist_ok=True)
        if FRAMES:
            tracemalloc.start(FRAMES)
        gevent.spawn(_loop, out)
