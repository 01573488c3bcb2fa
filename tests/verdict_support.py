"""What a statistical gate may honestly answer when a test runs a real load on a starved machine."""

from __future__ import annotations

from typing import Any


def honest_outcome(verdict: dict[str, Any]) -> tuple[str, int]:
    """The (verdict, exit code) a run that should pass may give: PASS and 0; or INCONCLUSIVE and 3 when
    a starved machine widened intervals across their margins, every unsettled criterion leaning PASS
    and saying what would settle it. Never a FAIL (asserted here)."""
    unsettled = [c for c in verdict["criteria"] if c["verdict"] != "PASS"]
    assert all(c["verdict"] == "INCONCLUSIVE" and c["note"].startswith("leans PASS") for c in unsettled), (
        unsettled
    )
    return ("INCONCLUSIVE", 3) if unsettled else ("PASS", 0)
