"""A missing dependency skips a developer's run but fails CI (tests/needs.py)."""

from __future__ import annotations

import random

import pytest
from needs import import_or_fail, in_ci, seeded_rng, skip_or_fail


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("", False), ("false", False)])
def test_ci_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_missing_dependency_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must provide this: no such tool"):
        skip_or_fail("no such tool")
    with pytest.raises(pytest.fail.Exception, match="gateload_no_such_module is not importable"):
        import_or_fail("gateload_no_such_module", "pip install it")


def test_missing_dependency_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no such tool"):
        skip_or_fail("no such tool")
    assert import_or_fail("json", "stdlib").dumps([]) == "[]"


def test_seeded_rng_replays_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATELOAD_TEST_SEED", "1234")
    first = seeded_rng("moments").random()
    assert "seed 1234 (replay with GATELOAD_TEST_SEED=1234)" in capsys.readouterr().out
    assert seeded_rng("moments").random() == first
    capsys.readouterr()
    monkeypatch.delenv("GATELOAD_TEST_SEED")
    printed = seeded_rng("moments")
    seed = int(capsys.readouterr().out.split("seed ")[1].split()[0])
    assert printed.random() == random.Random(seed).random()  # the printed seed is the one used
    monkeypatch.setenv("GATELOAD_TEST_SEED", "x1")
    with pytest.raises(pytest.fail.Exception, match="GATELOAD_TEST_SEED='x1' is not an integer"):
        seeded_rng("moments")
