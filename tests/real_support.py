"""Helpers for the tests against real gateway software (tests/test_real_*.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateload.targets.local.farm import LocalRealFarm
from gateload.targets.local.process import MissingTool
from gateload.targets.profile import Workload

T = TypeVar("T")

#: Every activity of the mix, quickly: the tests check the software, not a workday.
FAST_WORKLOAD = Workload(
    activities_per_session=6,
    think_min_s=0.01,
    think_max_s=0.03,
    typing_interval_ms=10.0,
    burst_keys=4,
    screen_bursts=2,
    screen_bytes=512,
    documents=["memo.pdf"],
    timeout_s=10.0,
    mix={"typing": 1.0, "screen": 1.0, "sftp_get": 1.0, "sftp_put": 1.0, "tunnel": 1.0, "exec": 1.0},
)


def start_or_skip(start: Callable[[], T]) -> T:
    """Run ``start``; a missing binary or privilege skips the test here, but fails it in CI.

    CI (``CI=true``) installs openssh-server, haproxy and stunnel4 and runs as root, so a skip there
    would hide a broken install step.
    """
    try:
        return start()
    except MissingTool as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide real gateway software: {exc}")
        pytest.skip(str(exc))


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh loop with an unpatched selector.

    Other test modules import Locust, which monkey-patches the process with gevent; an epoll selector
    from before the patch keeps this loop on real time whatever was collected first.
    """
    selector_class: Any = selectors.DefaultSelector
    if "gevent.monkey" in sys.modules:
        from gevent import monkey

        if monkey.is_module_patched("selectors"):
            selector_class = monkey.get_original("selectors", "DefaultSelector")
    loop = asyncio.SelectorEventLoop(selector_class())
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@contextlib.contextmanager
def private_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder of our own, removed afterwards.

    Not pytest's ``tmp_path_factory``: a concurrent pytest session on the same machine prunes old
    ``pytest-of-<user>/pytest-N`` folders at its start, which would delete a running farm's state.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"gateload-{prefix}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def running_farm(prefix: str, **kwargs: Any) -> Iterator[LocalRealFarm]:
    """A started :class:`LocalRealFarm` in a private folder (skipped when the software is missing)."""
    with private_dir(prefix) as state:
        farm = start_or_skip(lambda: LocalRealFarm(state, **kwargs).start())
        try:
            yield farm
        finally:
            farm.stop()


def probe_passed(done: subprocess.CompletedProcess[str], operations: Sequence[str]) -> list[str]:
    """The lines of a ``gateload probe`` run that passed: exit 0, an ok line (with its time) for each of
    ``operations`` and no FAIL line."""
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for op in operations:
        assert any(line.startswith("ok") and f"gateway {op} (" in line for line in lines), (op, lines)
    assert not any(line.startswith("FAIL") for line in lines), lines
    return lines
