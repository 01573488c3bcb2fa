"""Skips that cannot hide a broken CI: a missing dependency skips a developer's run, but fails in CI.

CI (``CI=true``, ``.ci/run``) installs every Debian and Python package the suite needs and runs as
root, so a skip there would mean an install step is broken and the test silently stopped testing.
"""

from __future__ import annotations

import os
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
