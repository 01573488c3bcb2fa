"""Helpers for the user-class tests (tests/test_users_*.py): fast farm settings and in-process runs."""

from __future__ import annotations

import time
from argparse import Namespace
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import locust  # noqa: F401  (gevent monkey-patching first, as under the locust command)
from locust.env import Environment

#: A farm and workload that make every activity happen within a few seconds (``reference_farm`` keys).
FAST = {
    "farm__accounts": 20,
    "farm__mfa": True,
    "farm__service__distribution": "constant",
    "farm__service__portal_page_ms": 1.0,
    "farm__service__portal_login_ms": 1.0,
    "farm__service__portal_launch_ms": 1.0,
    "farm__service__ssh_auth_ms": 1.0,
    "farm__service__keystroke_ms": 1.0,
    "farm__service__screen_update_ms": 1.0,
    "farm__service__tunnel_request_ms": 1.0,
    "farm__service__sftp_mb_per_s": 500.0,
    "workload__activities_per_session": 6,
    "workload__think_min_s": 0.01,
    "workload__think_max_s": 0.03,
    "workload__typing_interval_ms": 10.0,
    "workload__burst_keys": 4,
    "workload__screen_bursts": 2,
    "workload__screen_bytes": 512,
    "workload__timeout_s": 5.0,
}


@dataclass
class Run:
    """What an in-process Locust run produced."""

    env: Environment
    samples: list[dict[str, Any]] = field(default_factory=list)
    user_errors: list[BaseException] = field(default_factory=list)

    def count(self, kind: str, name: str, ok: bool = True) -> int:
        return sum(
            1
            for s in self.samples
            if s["request_type"] == kind and s["name"] == name and (s["exception"] is None) == ok
        )

    def operations(self, ok: bool = True) -> Counter[tuple[str, str]]:
        return Counter((s["request_type"], s["name"]) for s in self.samples if (s["exception"] is None) == ok)

    def errors(self) -> Counter[str]:
        return Counter(s["context"]["error"] for s in self.samples if s["exception"] is not None)


def environment(profile_path: Path, user_class: type) -> Run:
    """A Locust environment for ``user_class`` against the profile, recording every sample."""
    env = Environment(user_classes=[user_class], parsed_options=Namespace(profile=str(profile_path)))
    run = Run(env)
    env.events.request.add_listener(lambda **kw: run.samples.append(kw))
    env.events.user_error.add_listener(lambda **kw: run.user_errors.append(kw["exception"]))
    return run


def wait_until(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    """Let the greenlets run until ``predicate()`` holds, at most ``timeout_s``; its last value."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        gevent.sleep(step_s)
    return True


def run_users(
    profile_path: Path,
    user_class: type,
    users: int,
    until: Callable[[Run], bool],
    timeout_s: float = 30.0,
    spawn_rate: float | None = None,
) -> Run:
    """Run ``users`` users until ``until(run)`` holds (bounded by ``timeout_s``), then stop them.

    All users start at once unless ``spawn_rate`` (users per second) says otherwise.
    """
    run = environment(profile_path, user_class)
    runner = run.env.create_local_runner()
    try:
        runner.start(users, spawn_rate=spawn_rate or users)
        wait_until(lambda: until(run), timeout_s)
    finally:
        runner.quit()
    return run
