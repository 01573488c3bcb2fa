"""The first session of a closed-model HomeofficeUser has a random length, so relogons spread out."""

from __future__ import annotations

import random
from types import SimpleNamespace

from gateload.locustfiles.lib.session import HomeofficeUser


def _user(n: int, seed: int) -> HomeofficeUser:
    user = HomeofficeUser.__new__(HomeofficeUser)  # no environment needed for the length rule
    user.target = SimpleNamespace(profile=SimpleNamespace(workload=SimpleNamespace(activities_per_session=n)))
    user.rng = random.Random(seed)
    user.sessions_started = 0
    return user


def test_first_closed_session_is_cut_uniformly_then_full_length() -> None:
    firsts = []
    for seed in range(400):
        user = _user(20, seed)
        firsts.append(user._session_length(open_model=False))
        assert [user._session_length(open_model=False) for _ in range(3)] == [20, 20, 20]
    assert min(firsts) == 1 and max(firsts) == 20
    assert 8.5 < sum(firsts) / len(firsts) < 12.5  # uniform on 1..20 has mean 10.5
    assert len(set(firsts)) == 20


def test_open_model_sessions_are_always_full_length() -> None:
    user = _user(7, 1)
    assert [user._session_length(open_model=True) for _ in range(5)] == [7] * 5
