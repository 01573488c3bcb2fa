"""Keeps CPython's full garbage collections out of the measured part of each load step.

A full (generation 2) collection scans every object the process holds, and nothing else runs while it
does: at 400 GatewayUsers one took 111 ms (bench_density), so every keystroke planned in that time left
late and the step's p99 start lateness read 16 ms while the generator used a fraction of its core.
When a step's users have all spawned, their sessions are the long-lived objects. Then, in the ramp the
analysis cuts as warm-up, one full collection runs and :func:`gc.freeze` moves everything alive into
the permanent generation: later full collections scan only what came after. Each step first undoes the
previous freeze, so cycles among objects that died since are collected then. The cost: cyclic garbage
among objects frozen at the last spawn waits for the next one (at most that moment's sessions).
"""

from __future__ import annotations

import gc
import time
from typing import Any


def refreeze() -> float:
    """Unfreeze, collect everything, freeze what is alive; the seconds it took."""
    t0 = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - t0


def install(environment: Any) -> None:
    """Refreeze whenever this process's users have all spawned (every runner role fires the event)."""
    environment.events.spawning_complete.add_listener(lambda **_kw: refreeze())
