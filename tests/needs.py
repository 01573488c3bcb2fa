"""Skips that cannot hide a broken CI: a missing dependency skips a developer's run, but fails in CI.

CI (``CI=true``, ``.ci/run``) installs every Debian and Python package the suite needs and runs as
root, so a skip there would mean an install step is broken and the test silently stopped testing.
"""

from __future__ import annotations

import os
import random
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True under CI (``CI`` set to anything but empty, ``0`` or ``false``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip here; fail under CI, where ``reason`` means the CI set-up is broken."""
    if in_ci():
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


def import_or_fail(module: str, reason: str) -> ModuleType:
    """``pytest.importorskip`` that fails under CI instead of skipping."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        skip_or_fail(f"{module} is not importable ({reason})")


def wakeup_lateness_ms(samples: int = 20, sleep_s: float = 0.005) -> float:
    """How late this machine wakes a sleeping thread right now: the median overshoot of a real sleep.

    A delay line or a timer can only be late, never early, and on a busy machine it is late by about
    this much per wake-up: timing tests add it to their upper bound instead of hoping for a quiet core.
    """
    import statistics
    import sys
    import time

    sleep = time.sleep
    if "gevent.monkey" in sys.modules:  # under Locust's patching: the OS sleep, not a greenlet's
        from gevent import monkey

        sleep = monkey.get_original("time", "sleep")
    overshoot = []
    for _ in range(samples):
        t0 = time.perf_counter()
        sleep(sleep_s)
        overshoot.append((time.perf_counter() - t0 - sleep_s) * 1000.0)
    return max(0.0, statistics.median(overshoot))


SEED_ENV = "GATELOAD_TEST_SEED"


def seeded_rng(what: str) -> random.Random:
    """A test's random choices, seeded: the seed is printed (pytest shows it with a failure) and
    ``GATELOAD_TEST_SEED`` sets it to replay a failed run's choices."""
    raw = os.environ.get(SEED_ENV, "").strip()
    try:
        seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    except ValueError:
        pytest.fail(
            f"{SEED_ENV}={raw!r} is not an integer: give the seed a failed run printed", pytrace=False
        )
    print(f"{what}: seed {seed} (replay with {SEED_ENV}={seed})")
    return random.Random(seed)
