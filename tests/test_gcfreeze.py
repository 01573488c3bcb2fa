"""gcfreeze: a step's spawned sessions leave the full garbage collections, and die-offs are collected."""

from __future__ import annotations

import gc
import weakref

import pytest
from locust.env import Environment

from gateload.locustfiles.lib import gcfreeze


class _Cyclic:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def env() -> Environment:
    environment = Environment()
    gcfreeze.install(environment)
    return environment  # conftest unfreezes after each test


def test_spawning_complete_freezes_what_is_alive(env: Environment) -> None:
    session = _Cyclic()
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    env.events.spawning_complete.fire(user_count=3)
    assert gc.get_freeze_count() > 0
    # a frozen object is out of every generation: a full collection no longer scans it
    assert not any(o is session for o in gc.get_objects(generation=2))


def test_a_session_that_died_after_a_freeze_is_collected_at_the_next_spawn(env: Environment) -> None:
    session = _Cyclic()
    alive = weakref.ref(session)
    env.events.spawning_complete.fire(user_count=1)
    del session
    gc.collect()
    assert alive() is not None  # frozen: the collector leaves it, as the module says
    env.events.spawning_complete.fire(user_count=2)
    assert alive() is None
