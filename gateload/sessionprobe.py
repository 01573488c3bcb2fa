"""``gateload probe`` of a gateway that speaks another protocol than SSH (SSL-VPN, RDP, OpenVPN, ...).

SSH has a probe of its own, step by step (``probe.py``: host key pin, prompt, SFTP, tunnel). Every other
protocol is probed the way its users run it: one session from the protocol's own factory (the seam of
``locustfiles/lib/remote.py``) logs on, then runs once each activity the workload mix weights, and every
sample the session records becomes a line: its operation and time, or its error class and what to fix.
A protocol added later is probed without a change here.

No Locust: the session fires its samples into :class:`_Samples`, which stands in for Locust's event hook.
The session's operations run in the bridge's loop thread, awaited from this (unpatched) main greenlet.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateload.targets.profile import Profile

OK, FAIL, SKIP = "ok", "FAIL", "skip"

#: What to check when an operation failed with this error class (the probe's "-> fix" part).
FIXES = {
    "auth_failed": "check the account in the [credentials] file (or GATELOAD_CREDENTIALS)",
    "tls_error": "set gateway.ca_file to the CA that signs the gateway's certificate",
    "refused": "start the gateway or fix gateway.host/port",
    "timeout": "is the gateway up and reachable? raise workload.timeout_s if it is only slow",
    "reset": "the gateway closed the connection: see its log",
    "throttled": (
        "the server's anti-abuse limits turned the session away (sessions per account, connection "
        "rate, a ban): wait for them to clear, or test against its relaxed configuration"
    ),
    "tunnel_refused": "the target behind the gateway is not permitted: fix gateway.tunnel_target",
}


@dataclass
class _Samples:
    """Locust's ``environment.events.request`` as far as a session uses it: it keeps what is fired."""

    fired: list[dict[str, Any]] = field(default_factory=list)

    @property
    def events(self) -> _Samples:
        return self

    @property
    def request(self) -> _Samples:
        return self

    def fire(self, **sample: Any) -> None:
        self.fired.append(sample)


def _line(name: str, samples: list[dict[str, Any]], fixes: Mapping[str, str] = FIXES) -> tuple[str, str]:
    """One status line for all samples of one operation (a paced burst records one per key)."""
    failed = [s for s in samples if s["exception"] is not None]
    times = [s["response_time"] for s in samples if s["exception"] is None]
    if failed:
        error = failed[0]["context"]["error"] or "other"
        fix = fixes.get(error, "see the gateway's log")
        return FAIL, f"{name}: {error}, {len(failed)} of {len(samples)} failed -> {fix}"
    if len(samples) == 1:
        return OK, f"{name} ({_ms(times[0])})"
    return OK, f"{name}: {len(samples)} of {len(samples)} ok (median {_ms(statistics.median(times))})"


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def probe_session(
    profile: Profile,
    accounts: Sequence[Any],
    username: str,
    secret: str | None,
    add: Callable[[str, str], None],
) -> None:
    """Log one session on as ``username``, run each weighted activity once, report every operation.

    ``accounts``: the credentials file's accounts (the protocol's session may pick its own).

    ``add(status, text)`` takes each line. A target failure is a FAIL line, never an exception.
    """
    from gateload.locustfiles.lib import remote
    from gateload.locustfiles.lib.runtime import Target

    proto = remote.for_profile(profile)
    missing = remote.missing_ca_file(profile)
    if missing is not None:
        add(FAIL, f"CA file {missing} not found -> set gateway.ca_file to the CA that signs the gateway")
        return
    sink = _Samples()
    session = proto.factory(sink, Target(profile, tuple(accounts)), 0)
    activities = [a for a in session.activities if profile.workload.mix.get(a, 0.0) > 0]
    try:
        logged_on = session.logon(username, secret) is None
        for activity in activities if logged_on else ():
            if not session.run_activity(activity, (profile.workload.documents or [""])[0]):
                break
    finally:
        session.close()
    by_name: dict[str, list[dict[str, Any]]] = {}
    for sample in sink.fired:
        by_name.setdefault(f"{sample['request_type']} {sample['name']}", []).append(sample)
    gw = profile.gateway
    fixes = {k: v.format(host=gw.host, port=gw.port) for k, v in {**FIXES, **proto.fixes}.items()}
    for name, samples in by_name.items():
        add(*_line(name, samples, fixes))
    if not logged_on and activities:
        add(SKIP, f"{', '.join(activities)}: the logon failed")
