"""The user classes in real Locust (in-process runner) against the real reference farm."""

from __future__ import annotations

import asyncio
import csv
import gc
import json
import os
import time
import urllib.request
from pathlib import Path

import asyncssh
import pytest
from users_support import FAST, Run, environment, run_users, wait_until

from gateload.locustfiles.lib.aiobridge import get_bridge
from gateload.locustfiles.lib.gateway import SSH_ACTIVITIES, SSHSession
from gateload.locustfiles.lib.portal import PortalUser
from gateload.locustfiles.lib.remoteuser import GatewayUser
from gateload.locustfiles.lib.runtime import target_for
from gateload.locustfiles.lib.session import HomeofficeUser
from gateload.targets.profile import ACTIVITIES, load_profile
from gateload.targets.reference.harness import write_profile_variant
from gateload.targets.reference.state import add_authorized_key

EVEN_MIX = {a: 1.0 for a in ACTIVITIES}
HTTP_NAMES = ["GET /login", "POST /login", "POST /mfa", "GET /api/apps", "POST /api/launch"]
SESSION_OPS = [("HTTP", n) for n in [*HTTP_NAMES, "GET /documents/[doc]", "POST /logout"]] + [
    ("SSH", "connect"),
    ("SSH", "shell"),
    ("SSH", "keystroke"),
    ("SSH", "enter"),
    ("SSH", "screen_update"),
    ("SSH", "exec"),
    ("SFTP", "get"),
    ("SFTP", "put"),
    ("TUNNEL", "http"),
    ("SESSION", "logon"),
    ("SESSION", "session"),
]
CONTEXT_KEYS = {"user_id", "server", "t_intended", "error", "start_time"}


@pytest.fixture(scope="module")
def fast_farm(reference_farm) -> Path:
    return reference_farm("reference-before", **FAST, workload__mix=EVEN_MIX)


def _secrets(profile_path: Path) -> list[str]:
    with open(load_profile(profile_path).credentials_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r[k] for r in rows for k in ("password", "totp_secret") if r.get(k)]


def _all_seen(run: Run, ops: list[tuple[str, str]], at_least: int = 1) -> bool:
    seen = run.operations()
    return all(seen[op] >= at_least for op in ops)


def test_homeoffice_sessions_run_every_operation(fast_farm: Path) -> None:
    run = run_users(fast_farm, HomeofficeUser, 4, lambda r: _all_seen(r, SESSION_OPS, 2), timeout_s=60)
    missing = [op for op in SESSION_OPS if run.operations()[op] < 2]
    assert not missing, f"never succeeded twice: {missing}; failures: {run.errors()}"
    assert not run.user_errors
    assert not run.operations(ok=False), run.errors()  # an idle, fast farm: nothing fails
    profile = load_profile(fast_farm)
    for s in run.samples:
        ctx = s["context"]
        assert set(ctx) >= CONTEXT_KEYS
        assert ctx["user_id"] >= 1 and ctx["error"] is None and ctx["start_time"] == s["start_time"]
        assert ctx["server"] in profile.server_ids
    keys = [s for s in run.samples if s["name"] == "keystroke"]
    # Paced: each keystroke is planned, and never starts before its plan.
    assert all(s["context"]["t_intended"] <= s["start_time"] + 0.002 for s in keys)
    assert all(s["context"]["t_intended"] is None for s in run.samples if s["name"] != "keystroke")
    docs = profile.farm.documents
    assert all(s["response_length"] in docs.values() for s in run.samples if s["name"] == "get")
    w = profile.workload
    screens = [s["response_length"] for s in run.samples if s["name"] == "screen_update"]
    assert min(screens) >= w.screen_bursts * w.screen_bytes
    # Logon spans its parts: it is at least as long as its own connect.
    assert min(s["response_time"] for s in run.samples if s["name"] == "logon") > 0


def test_no_secret_reaches_a_sample(fast_farm: Path) -> None:
    run = run_users(fast_farm, HomeofficeUser, 2, lambda r: _all_seen(r, [("SESSION", "session")]), 30)
    secrets = _secrets(fast_farm)
    assert secrets
    text = repr([(s["name"], str(s["exception"]), s["context"]) for s in run.samples])
    assert not [x for x in secrets if x in text]


def test_portal_user_visits(fast_farm: Path) -> None:
    names = [*HTTP_NAMES, "GET /documents/[doc]", "POST /logout"]
    ops = [("HTTP", n) for n in names]
    run = run_users(fast_farm, PortalUser, 2, lambda r: _all_seen(r, ops, 2), timeout_s=30)
    assert all(run.operations()[op] >= 2 for op in ops), run.operations()
    assert not run.user_errors and not run.operations(ok=False)
    assert {s["request_type"] for s in run.samples} == {"HTTP"}


@pytest.fixture(scope="module")
def key_profile(fast_farm: Path, ssh_keypair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fast farm's profile with public-key auth (the key is authorized on the farm)."""
    profile = load_profile(fast_farm)
    add_authorized_key(profile.resolve(profile.farm.state_dir), ssh_keypair.public_line)
    out = tmp_path_factory.mktemp("key-profile") / "profile.toml"
    return write_profile_variant(fast_farm, out, {"credentials.ssh_key": str(ssh_keypair.private_path)})


def test_gateway_user_with_a_key(key_profile: Path) -> None:
    names = {"typing": "keystroke", "screen": "screen_update", "exec": "exec"}
    ops = [("SSH", "connect"), ("SFTP", "get"), ("SFTP", "put"), ("TUNNEL", "http")]
    ops += [("SSH", names[a]) for a in SSH_ACTIVITIES if a in names]
    run = run_users(key_profile, GatewayUser, 3, lambda r: _all_seen(r, ops, 2), timeout_s=30)
    assert all(run.operations()[op] >= 2 for op in ops), run.operations()
    assert not run.user_errors and not run.operations(ok=False)
    assert run.count("SSH", "connect") == 3  # one kept-open connection per user


def _fingerprint(profile_path: Path) -> str:
    profile = load_profile(profile_path)
    return asyncssh.read_public_key(profile.resolve(profile.gateway.host_key)).get_fingerprint("sha256")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("other key", "host_key_mismatch"),
        ("right fingerprint", None),
        ("wrong fingerprint", "host_key_mismatch"),
        ("no pin at all", "host_key_mismatch"),
        ("verification off", None),
    ],
)
def test_host_key_pinning(case: str, expected: str | None, key_profile: Path, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    other.write_public_key(tmp_path / "other.pub")
    wrong = other.get_fingerprint("sha256")
    other_key, right = str(tmp_path / "other.pub"), _fingerprint(key_profile)
    overrides = {
        "other key": {"gateway.host_key": other_key},
        "right fingerprint": {"gateway.host_key": "", "gateway.host_key_fingerprint": right},
        "wrong fingerprint": {"gateway.host_key": "", "gateway.host_key_fingerprint": wrong},
        "no pin at all": {"gateway.host_key": ""},
        "verification off": {"gateway.host_key": other_key, "gateway.verify_host_key": False},
    }[case]
    path = write_profile_variant(key_profile, tmp_path / "profile.toml", overrides)
    run = environment(path, GatewayUser)
    session = SSHSession(run.env, target_for(run.env), user_id=1)
    failure = session.logon(target_for(run.env).account_for(1).username, None)
    session.close()
    assert (failure.error_class if failure else None) == expected
    connect = [s for s in run.samples if s["name"] == "connect"]
    assert len(connect) == 1 and connect[0]["context"]["error"] == expected
    if expected:
        assert str(connect[0]["exception"]).startswith("host_key_mismatch")


def _busy_workers(profile_path: Path) -> int:
    """Worker slots in use on the whole farm, from its /metrics."""
    url = load_profile(profile_path).portal.url + "/metrics?format=json"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return sum(s["busy"] for s in json.load(reply)["servers"].values())


def test_a_user_stopped_mid_operation_stops_at_once_and_fires_nothing_late(reference_farm) -> None:
    slow_screens = {
        "workload__mix": {"screen": 1.0},
        "workload__screen_bursts": 20,
        "farm__service__screen_update_ms": 1000.0,  # a 20 s screen burst
        "farm__servers__0__workers": 8,
    }
    path = reference_farm("reference-before", **{**FAST, **slow_screens})
    run = environment(path, HomeofficeUser)
    runner = run.env.create_local_runner()
    runner.start(2, spawn_rate=2)
    assert wait_until(lambda: run.count("SSH", "shell") == 2, 20)
    # both users hold a worker on the farm: inside a 1 s screen update (every other operation takes 1 ms)
    assert wait_until(lambda: _busy_workers(path) == 2, 10), _busy_workers(path)
    fired = len(run.samples)
    t0 = time.perf_counter()
    runner.stop()
    assert time.perf_counter() - t0 < 3.0
    bridge = get_bridge()

    async def pending() -> int:
        return len(asyncio.all_tasks()) - 1  # all but this one

    assert wait_until(lambda: bridge.run(pending()) == 0, 5.0)  # the bursts were cancelled
    runner.quit()
    assert len(run.samples) == fired  # nothing fired after the stop
    assert run.count("SSH", "screen_update") == 0 and run.count("SSH", "screen_update", ok=False) == 0
    assert not run.user_errors


def test_failures_on_a_saturated_farm_are_attributed_and_the_run_goes_on(reference_farm) -> None:
    saturated = {
        "farm__servers__0__count": 1,
        "farm__servers__0__workers": 1,
        "farm__servers__0__max_sessions": 1,
        "farm__servers__0__queue_limit": 0,
    }
    path = reference_farm("reference-before", **{**FAST, **saturated})

    def enough(r: Run) -> bool:
        errors = r.errors()
        return errors["http_503"] >= 3 and errors["refused"] >= 1 and r.count("SESSION", "session") >= 1

    run = run_users(path, HomeofficeUser, 6, enough, timeout_s=45)
    errors = run.errors()
    assert errors["http_503"] >= 3 and errors["refused"] >= 1, errors
    assert run.count("SESSION", "session") >= 1  # some sessions still ran through
    assert not run.user_errors
    failed = [s for s in run.samples if s["context"]["error"] in ("http_503", "refused")]
    assert all(s["context"]["server"] == "old-01" for s in failed)
    assert {s["request_type"] for s in failed if s["context"]["error"] == "refused"} <= {"SSH", "SESSION"}
    assert all(str(s["exception"]).startswith(s["context"]["error"]) for s in failed)


def test_sessions_do_not_leak_connections(fast_farm: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    get_bridge()  # the loop's own descriptors are not a leak
    before = open_fds()
    run = run_users(fast_farm, HomeofficeUser, 2, lambda r: r.count("SESSION", "session") >= 12, 60)
    assert run.count("SESSION", "session") >= 12
    gc.collect()
    assert open_fds() - before <= 4  # 12 sessions, each with its own portal and SSH connections
