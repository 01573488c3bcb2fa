"""Locust's per-second counters are trimmed to what Locust reads; its figures do not change."""

from __future__ import annotations

import time

from locust.stats import RequestStats

from gateload.locustfiles.lib import memtrim


def _ten_minutes_of_requests(stats: RequestStats, now: int) -> None:
    """What a 10-minute run leaves behind: one key per second per request name and in the total."""
    for name in ("keystroke", "connect"):
        stats.log_request("SSH", name, 12.0, 0)
        stats.log_error("SSH", name, "timeout")
        for entry in (stats.get(name, "SSH"), stats.total):
            for t in range(now - 600, now + 1):
                entry.num_reqs_per_sec[t] += 3
                entry.num_fail_per_sec[t] += 1
    stats.total.start_time = now - 600
    stats.total.last_request_timestamp = now


def test_trim_keeps_the_last_minute_and_what_locust_reports() -> None:
    now = int(time.time())
    stats = RequestStats()
    _ten_minutes_of_requests(stats, now)
    entry = stats.get("keystroke", "SSH")

    def reported() -> tuple[float, float, float, int]:
        return entry.current_rps, entry.current_fail_per_sec, stats.total.current_rps, entry.num_requests

    before = reported()

    dropped = memtrim.trim(stats, now)

    assert dropped == 3 * 2 * (600 - memtrim.KEEP_S)  # 2 entries + total, 2 counters each
    for e in (entry, stats.get("connect", "SSH"), stats.total):
        assert min(e.num_reqs_per_sec) == min(e.num_fail_per_sec) == now - memtrim.KEEP_S
        assert len(e.num_reqs_per_sec) == memtrim.KEEP_S + 1
    assert reported() == before
    assert entry.current_rps == 3.0 and entry.current_fail_per_sec == 1.0  # the counts that were logged
    assert memtrim.trim(stats, now) == 0  # nothing more to drop
