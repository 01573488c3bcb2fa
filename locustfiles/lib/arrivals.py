"""Session arrivals (minimal placeholder; engineer C owns this module and replaces it).

``next_arrival(environment)`` is called by ``HomeofficeUser`` before each session: ``None`` means
"start now" (closed loop); a number is the intended epoch start time of the session (logon-storm mode).
"""

from __future__ import annotations

from typing import Any


def next_arrival(environment: Any) -> float | None:
    """The intended start time of this user's next session, or None to start at once."""
    return None
