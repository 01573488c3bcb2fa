"""Locust plugin for ``bench_endurance.py --trace DIR``: tracemalloc snapshots of the Locust process.

Loaded as a second locustfile (``-f homeoffice.py,bench/_memtrace.py``) so the harness itself carries
no diagnostics. Every ``GATELOAD_MEMTRACE_INTERVAL`` seconds (default 60) a snapshot is written to
``GATELOAD_MEMTRACE_DIR/snap-NNN.pickle``; ``bench_endurance.py`` compares the first after the warm-up
with the last.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path

import gevent
from locust import events

OUT = os.environ.get("GATELOAD_MEMTRACE_DIR")
INTERVAL = float(os.environ.get("GATELOAD_MEMTRACE_INTERVAL", "60"))
FRAMES = int(os.environ.get("GATELOAD_MEMTRACE_FRAMES", "6"))


def _snapshots(out: Path) -> None:
    for i in range(10_000):  # bounded; the run ends long before
        gevent.sleep(INTERVAL)
        gc.collect()
        tracemalloc.take_snapshot().dump(str(out / f"snap-{i:03d}.pickle"))


@events.init.add_listener
def _start(environment, **_kw) -> None:
    if OUT:
        out = Path(OUT)
        out.mkdir(parents=True, exist_ok=True)
        tracemalloc.start(FRAMES)
        gevent.spawn(_snapshots, out)
