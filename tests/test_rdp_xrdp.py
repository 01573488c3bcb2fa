"""The ``rdp`` protocol against a real xrdp on loopback (issue 13, part 2).

xrdp is Debian's package with the xorgxrdp back end, started by the tests as root from copies of its
shipped configs (:class:`targets.local.xrdp.Xrdp`): one Xorg session with an xterm per stock account.
Locust's GatewayUser speaks RDP through a profile with ``[gateway] protocol = "rdp"`` (aardwolf with
the fixes of :mod:`locustfiles.lib.rdpfix`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import users_support  # noqa: F401  (gevent monkey-patching first, as under the locust command)
from real_support import private_dir, run_async, start_or_skip
from users_support import Run, environment, wait_until

from locustfiles.lib import remote
from locustfiles.lib.aiobridge import timed
from locustfiles.lib.errors import classify
from locustfiles.lib.rdp import RDP, RDP_CATALOGUE, RDPDesktop, RDPSession
from locustfiles.lib.remoteuser import GatewayUser
from targets.local.process import free_port
from targets.local.xrdp import Xrdp
from targets.profile import Workload, dump_profile, load_profile

REPO = Path(__file__).resolve().parent.parent
BASE_PROFILE = REPO / "targets" / "profiles" / "local-real.toml"
USERS = 10
HOLD_S = 30.0
#: A paced burst of 8 key presses 250 ms apart, then a think time longer than the pace: every desktop
#: stays busy and no gap between bursts can pass for a gap inside one.
WORKLOAD = Workload(
    activities_per_session=1000,
    think_min_s=0.3,
    think_max_s=0.7,
    typing_interval_ms=250.0,
    burst_keys=8,
    documents=["memo.pdf"],
    timeout_s=15.0,
    mix={"typing": 1.0},
)


@contextlib.contextmanager
def xrdp(prefix: str, **kwargs: Any) -> Iterator[Xrdp]:
    """A started xrdp in a private folder (skipped without root or the packages; failed in CI)."""
    with private_dir(prefix) as state:
        server = start_or_skip(lambda: Xrdp(state / "rdp", **kwargs).start())
        try:
            yield server
        finally:
            server.stop()


def rdp_profile(server: Xrdp, folder: Path, name: str, credentials: Path | None = None) -> Path:
    """The shipped local-real profile pointed at this xrdp: protocol rdp, its accounts."""
    p = load_profile(BASE_PROFILE)
    profile = dataclasses.replace(
        p,
        gateway=dataclasses.replace(
            p.gateway, host=server.host, port=server.port, protocol="rdp", host_key=""
        ),
        credentials=dataclasses.replace(p.credentials, file=str(credentials or server.credentials)),
        workload=WORKLOAD,
    )
    return dump_profile(profile, folder / f"{name}.toml")


def run_users(profile: Path, users: int, until: float) -> Run:
    """``users`` GatewayUsers started at once, run for ``until`` seconds in this process."""
    run = environment(profile, GatewayUser)
    runner = run.env.create_local_runner()
    try:
        runner.start(users, spawn_rate=users)
        wait_until(lambda: False, until)
    finally:
        runner.quit()
    return run


def failures(run: Run) -> list[tuple[str, str]]:
    return [(s["name"], s["context"]["error"]) for s in run.samples if s["exception"] is not None]


def ok_samples(run: Run, name: str) -> list[dict[str, Any]]:
    return [
        s for s in run.samples if s["request_type"] == RDP and s["name"] == name and s["exception"] is None
    ]


def summary(run: Run) -> str:
    """p50/p95 of each timed operation, and frames and bytes per second over the bursts."""
    parts = []
    for name in ("connect", "first_frame", "desktop_ready", "key"):
        times = sorted(s["response_time"] for s in ok_samples(run, name))
        if times:
            p50, p95 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.95))]
            parts.append(f"{name} n={len(times)} p50={p50:.1f} p95={p95:.1f} ms")
    for name in ("frames", "bytes"):
        rows = ok_samples(run, name)
        seconds = sum(s["response_time"] for s in rows) / 1000.0
        if seconds:
            parts.append(f"{name}/s per user {sum(s['response_length'] for s in rows) / seconds:.1f}")
    return "; ".join(parts)


def test_the_rdp_protocol_is_a_registered_remote_session() -> None:
    proto = remote.protocol("rdp")
    assert proto.catalogue is RDP_CATALOGUE and proto.factory is RDPSession
    assert RDP_CATALOGUE.logon == "RDP desktop_ready" and RDP_CATALOGUE.echo == "RDP key"
    assert [o.key for o in RDP_CATALOGUE.paced] == ["RDP key"]
    assert RDP_CATALOGUE.aggregates == {"RDP frames", "RDP bytes"}
    assert RDP_CATALOGUE.activities == ("typing",)
    for cls in ("auth_failed", "refused", "throttled", "tls_error", "timeout"):
        assert cls in RDP_CATALOGUE.get("RDP desktop_ready").errors  # type: ignore[union-attr]


def test_ten_users_hold_desktops_30s_with_no_failures(tmp_path: Path) -> None:
    """The issue's done-when: 10 RDP users against relaxed xrdp hold desktops ~30 s with 0 failures,
    every operation of the catalogue in the samples, the paced keys with their intended starts."""
    with xrdp("xrdp-relaxed", accounts=USERS, relaxed=True) as server:
        profile = rdp_profile(server, tmp_path, "relaxed")
        started = time.monotonic()
        run = run_users(profile, USERS, HOLD_S + 8.0)  # ~8 s for ten sessions to start, then the hold
        elapsed = time.monotonic() - started
        sessions = server.sessions()
    assert failures(run) == [] and run.user_errors == []
    assert sessions == USERS  # one Xorg session per account
    names = {s["name"] for s in run.samples if s["request_type"] == RDP}
    expected = {o.name for o in RDP_CATALOGUE.operations} - {"reconnect", "drop"}  # only after a drop
    assert expected <= names
    ready = ok_samples(run, "desktop_ready")
    assert len(ready) == USERS  # each user logged on once and held the desktop
    keys = ok_samples(run, "key")
    users_typing = {s["context"]["user_id"] for s in keys}
    assert len(users_typing) == USERS
    # held ~30 s: the keys of the run span most of it
    span = max(s["start_time"] for s in keys) - min(s["start_time"] for s in keys)
    assert span >= HOLD_S - 5.0 and elapsed >= HOLD_S
    assert all(s["context"]["t_intended"] is not None for s in keys)
    frames = sum(s["response_length"] for s in ok_samples(run, "frames"))
    assert frames >= len(keys)  # every key caused at least one bitmap rectangle
    assert sum(s["response_length"] for s in ok_samples(run, "bytes")) > 0
    print(summary(run))  # the figures the report quotes (pytest -s)
    for s in ready:  # milestones in order, timed from the same connect start
        first = next(
            f for f in ok_samples(run, "first_frame") if f["context"]["user_id"] == s["context"]["user_id"]
        )
        assert first["response_time"] <= s["response_time"]


def test_a_wrong_password_is_auth_failed(tmp_path: Path) -> None:
    with xrdp("xrdp-wrongpw", accounts=1, relaxed=True) as server:
        bad = tmp_path / "bad.csv"
        bad.write_text(f"username,password\n{server.accounts[0][0]},not-the-password\n")
        bad.chmod(0o600)
        profile = rdp_profile(server, tmp_path, "wrong", credentials=bad)
        run = environment(profile, GatewayUser)
        runner = run.env.create_local_runner()
        try:
            runner.start(1, spawn_rate=1)
            wait_until(lambda: any(s["exception"] is not None for s in run.samples), 20.0)
        finally:
            runner.quit()
    fails = failures(run)
    assert fails and fails[0] == ("desktop_ready", "auth_failed")
    assert {e for _, e in fails} == {"auth_failed"}
    assert not ok_samples(run, "desktop_ready") and run.user_errors == []


def test_production_defaults_more_users_than_pending_connections_are_classified(tmp_path: Path) -> None:
    """Debian's shipped xrdp listens with a backlog of 2; 12 users at once: whatever fails is a
    classified failure the catalogue declares, never a crash, and the desktops that came up work."""
    users = 12
    with xrdp("xrdp-production", accounts=users, relaxed=False) as server:
        profile = rdp_profile(server, tmp_path, "production")
        run = run_users(profile, users, 15.0)
        passwords = [p for _, p in server.accounts]
    print(summary(run), failures(run))
    assert run.user_errors == []
    declared = {o.name: set(o.errors) for o in RDP_CATALOGUE.operations}
    for name, error in failures(run):
        assert error in declared[name], (name, error)
    assert ok_samples(run, "key")  # the sessions that came up type and see their keys
    for s in run.samples:  # no secret in what is recorded
        assert not any(p in f"{s['exception']} {s['context']}" for p in passwords)


def test_a_server_that_accepts_but_never_answers_is_throttled_and_a_closed_port_refused() -> None:
    """The kernel completes the TCP handshake for a full server's queue (listen, never accept): the
    connect that then times out is ``throttled``; nothing listening is ``refused``."""

    async def attempt(port: int) -> str | None:
        desk = RDPDesktop("127.0.0.1", port, "u", "p", timeout_s=1.0)
        outcome = await timed(desk.connect(), 5.0)
        desk.abort()
        return classify(outcome.error)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        assert run_async(attempt(listener.getsockname()[1])) == "throttled"
    assert run_async(attempt(free_port())) == "refused"
