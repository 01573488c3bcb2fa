"""The ``rdp`` protocol against a real xrdp on loopback (issue 13, part 2).

xrdp is Debian's package with the xorgxrdp back end, started by the tests as root from copies of its
shipped configs (:class:`gateload.targets.local.xrdp.Xrdp`): one Xorg session with an xterm per stock account.
Locust's GatewayUser speaks RDP through a profile with ``[gateway] protocol = "rdp"`` (aardwolf with
the fixes of :mod:`gateload.locustfiles.lib.rdpfix`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import users_support  # noqa: F401  (gevent monkey-patching first, as under the locust command)
from real_support import private_dir, probe_passed, run_async, start_or_skip
from users_support import Run, environment, wait_until

from gateload.locustfiles.lib import remote
from gateload.locustfiles.lib.aiobridge import Timed, timed
from gateload.locustfiles.lib.errors import classify
from gateload.locustfiles.lib.rdp import RDP, RDP_CATALOGUE, RDPDesktop, RDPSession
from gateload.locustfiles.lib.remoteuser import GatewayUser
from gateload.targets.local.process import free_port
from gateload.targets.local.xrdp import Xrdp
from gateload.targets.profile import Workload, dump_profile, load_profile

REPO = Path(__file__).resolve().parent.parent
LOCUST = str(Path(sys.executable).with_name("locust"))
GATELOAD = str(Path(sys.executable).with_name("gateload"))
_CAPTURE: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 120}
XRDP_CERT = "/etc/xrdp/cert.pem"
#: xrdp's log line when a client's credentials reach it (it passes them to sesman)
LOGON_LINE = "sending login info to session manager"
BASE_PROFILE = REPO / "targets" / "profiles" / "local-real.toml"
USERS = 10
HOLD_S = 30.0
LOGON_S = 8.0  # ten sessions (Xorg + xterm) starting at once on two busy cores: 3-6 s seen
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


def rdp_profile(
    server: Xrdp,
    folder: Path,
    name: str,
    credentials: Path | None = None,
    cert_fingerprint: str | None = None,
    verify: bool = True,
) -> Path:
    """The shipped local-real profile pointed at this xrdp: protocol rdp, its accounts, its certificate
    pinned (``cert_fingerprint``: another pin, "" none; ``verify=False``: the opt-out)."""
    p = load_profile(BASE_PROFILE)
    gateway = dataclasses.replace(
        p.gateway,
        host=server.host,
        port=server.port,
        protocol="rdp",
        host_key="",
        cert_fingerprint=server.cert_fingerprint if cert_fingerprint is None else cert_fingerprint,
        verify_host_key=verify,
    )
    profile = dataclasses.replace(
        p,
        gateway=gateway,
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


def summary(df: pd.DataFrame) -> str:
    """p50/p95 of each timed operation, and frames and bytes per second per user over the bursts."""
    parts = []
    ok = df[df["success"]]
    for name in ("connect", "first_frame", "desktop_ready", "key"):
        t = ok.loc[ok["name"] == name, "duration_ms"]
        if len(t):
            parts.append(f"{name} n={len(t)} p50={t.quantile(0.5):.1f} p95={t.quantile(0.95):.1f} ms")
    for name in ("frames", "bytes"):
        rows = ok[ok["name"] == name]
        seconds = rows["duration_ms"].sum() / 1000.0
        if seconds:
            parts.append(f"{name}/s per user {rows['bytes'].sum() / seconds:.1f}")
    return "; ".join(parts)


def as_frame(run: Run) -> pd.DataFrame:
    """An in-process run's samples in the columns of samples.parquet that :func:`summary` reads."""
    return pd.DataFrame(
        {
            "name": [s["name"] for s in run.samples],
            "success": [s["exception"] is None for s in run.samples],
            "duration_ms": [s["response_time"] for s in run.samples],
            "bytes": [s["response_length"] for s in run.samples],
        }
    )


def test_the_rdp_protocol_is_a_registered_remote_session() -> None:
    proto = remote.protocol("rdp")
    assert proto.catalogue is RDP_CATALOGUE and proto.factory is RDPSession
    assert RDP_CATALOGUE.logon == "RDP desktop_ready" and RDP_CATALOGUE.echo == "RDP key"
    assert [o.key for o in RDP_CATALOGUE.paced] == ["RDP key"]
    assert RDP_CATALOGUE.aggregates == {"RDP frames", "RDP bytes"}
    assert RDP_CATALOGUE.activities == ("typing",)
    for cls in ("auth_failed", "refused", "throttled", "tls_error", "timeout"):
        assert cls in RDP_CATALOGUE.get("RDP desktop_ready").errors  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The done-when run: 10 GatewayUsers under the real ``locust`` command against relaxed xrdp, all
    started at once, ~8 s for the sessions to start and then the 30 s hold."""
    folder = tmp_path_factory.mktemp("rdp-hold")
    with xrdp("xrdp-relaxed", accounts=USERS, relaxed=True) as server:
        profile = rdp_profile(server, folder, "relaxed")
        seconds = int(HOLD_S + LOGON_S)
        cmd = [
            LOCUST,
            *("-f", "locustfiles/homeoffice.py", "--headless"),
            *("-u", str(USERS), "-r", str(USERS), "-t", f"{seconds}s"),
            *("--profile", str(profile), "--results-dir", str(folder / "results"), "--label", "hold"),
            *("--exit-code-on-error", "0", "GatewayUser"),
        ]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=seconds + 90)
        sessions = server.sessions()
        passwords = [p for _, p in server.accounts]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    (run_dir,) = (folder / "results" / "hold").iterdir()
    yield {"dir": run_dir, "sessions": sessions, "passwords": passwords, "log": done.stdout + done.stderr}


@pytest.mark.load
def test_ten_users_hold_desktops_30s_with_no_failures(held: dict[str, Any]) -> None:
    """The issue's done-when: 10 RDP users against relaxed xrdp hold desktops 30 s with 0 failures,
    every operation of the catalogue in samples.parquet, the paced keys with their intended starts."""
    df = pd.read_parquet(held["dir"] / "samples.parquet")
    df["name"], df["type"] = df["name"].astype(str), df["type"].astype(str)
    assert df["success"].all(), df.loc[~df["success"], ["name", "error"]].value_counts()
    assert set(df["type"]) == {RDP}
    # every operation but the two that only follow a drop
    assert set(df["name"]) == {o.name for o in RDP_CATALOGUE.operations} - {"reconnect", "drop"}
    counts = df["name"].value_counts()
    assert counts["connect"] == counts["first_frame"] == counts["desktop_ready"] == USERS, counts
    assert df["user_id"].nunique() == USERS and held["sessions"] == USERS  # one Xorg session each
    keys = df[df["name"] == "key"]
    span = keys.groupby("user_id")["t_start"].agg(lambda t: t.max() - t.min())
    assert len(span) == USERS and span.min() >= HOLD_S - 5, span  # every desktop busy the whole hold
    assert keys["t_intended"].notna().all() and df.loc[df["name"] != "key", "t_intended"].isna().all()
    frames = df.loc[df["name"] == "frames", "bytes"].sum()
    assert frames >= len(keys)  # every key press caused at least one bitmap rectangle
    assert df.loc[df["name"] == "bytes", "bytes"].sum() > 0
    # the milestones of each logon in order, timed from the same connect start
    ms = df[df["name"].isin(["connect", "first_frame", "desktop_ready"])].pivot(
        index="user_id", columns="name", values="duration_ms"
    )
    assert (ms["connect"] <= ms["first_frame"]).all() and (ms["first_frame"] <= ms["desktop_ready"]).all()
    meta = json.loads((held["dir"] / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["catalogue"]["protocols"] == ["rdp"]
    assert meta["paced"] == {"RDP key": pytest.approx(4.0)}  # 1000 / 250 ms
    assert not any(p in held["log"] for p in held["passwords"])  # no secret in Locust's output
    print(summary(df))  # the figures the report quotes (pytest -s)


@pytest.mark.load
def test_gateload_report_shows_the_rdp_rows(held: dict[str, Any], tmp_path: Path) -> None:
    """``gateload report`` of the run reads the operations from the catalogue: the paced key latency
    from its intended start, nothing RDP-specific in the analysis."""
    margins = tmp_path / "acceptance.toml"
    margins.write_text(f"version = 1\n[load]\nreference_users = {USERS}\n")
    out = tmp_path / "report"
    done = subprocess.run(
        [
            GATELOAD,
            "report",
            str(held["dir"]),
            f"--out={out}",
            "--bootstrap",
            "200",
            f"--acceptance={margins}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((out / "verdict.json").read_text())["metrics"]["operations"]
    assert "RDP key" in rows and rows["RDP key"]["paced"], sorted(rows)
    # the aggregates have rows of their own but are not operations: ALL counts the keys alone (the
    # logons fall in the warm-up the analysis cuts)
    assert rows["ALL"]["after"]["count"] == rows["RDP key"]["after"]["count"] > 0, rows
    assert rows["RDP frames"]["after"]["count"] == rows["RDP bytes"]["after"]["count"] > 0
    assert all(r["after"]["error_rate"] == 0 for r in rows.values()), rows
    assert "RDP key (paced: from intended start)" in (out / "report.html").read_text()


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


def test_probe_logs_a_desktop_on_and_a_wrong_password_fails_its_line(tmp_path: Path) -> None:
    """``gateload probe`` of an rdp profile: one session, a line per operation; a wrong password FAILs."""
    with xrdp("xrdp-probe", accounts=1, relaxed=True) as server:
        probe = [GATELOAD, "probe", "--only", "gateway"]
        done = subprocess.run([*probe, str(rdp_profile(server, tmp_path, "probe"))], **_CAPTURE)
        bad = tmp_path / "bad.csv"
        bad.write_text(f"username,password\n{server.accounts[0][0]},not-the-password\n")
        bad.chmod(0o600)
        wrong = subprocess.run(
            [*probe, str(rdp_profile(server, tmp_path, "wrong", credentials=bad))], **_CAPTURE
        )
    lines = probe_passed(done, ("RDP connect", "RDP first_frame", "RDP desktop_ready"))
    assert not any("NOT verified" in line for line in lines), lines  # pinned, as profiles are
    keys = WORKLOAD.burst_keys
    assert any(f"RDP key: {keys} of {keys} ok" in line for line in lines), lines
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr[-2000:]
    assert "FAIL  gateway RDP desktop_ready: auth_failed, 1 of 1 failed -> check the account" in wrong.stdout
    assert "not-the-password" not in wrong.stdout + wrong.stderr


def test_pin_prints_the_certificate_and_a_pinned_logon_refuses_any_other(tmp_path: Path) -> None:
    """``gateload pin --protocol rdp`` prints the certificate's fingerprint as openssl does; pinned, a
    session logs on; with another pin, or none, it stops after the TLS handshake, before the password;
    only the explicit opt-out (``verify_host_key = false``) logs on unverified, with a warn line."""
    der = ssl.PEM_cert_to_DER_cert(Path(XRDP_CERT).read_text())  # the package's own, as shipped
    shipped = hashlib.sha256(der).digest().hex(":").upper()
    wrong = ("00" if shipped[:2] != "00" else "01") + shipped[2:]
    probe = [GATELOAD, "probe", "--only", "gateway"]
    with xrdp("xrdp-pin", accounts=1, relaxed=True) as server:
        pin = subprocess.run(
            [GATELOAD, "pin", "--protocol", "rdp", f"{server.host}:{server.port}"], **_CAPTURE
        )
        pinned = subprocess.run(
            [*probe, str(rdp_profile(server, tmp_path, "ok", cert_fingerprint=shipped))], **_CAPTURE
        )
        logons = _logons(server)
        other = subprocess.run(
            [*probe, str(rdp_profile(server, tmp_path, "no", cert_fingerprint=wrong))], **_CAPTURE
        )
        unpinned = subprocess.run(
            [*probe, str(rdp_profile(server, tmp_path, "none", cert_fingerprint=""))], **_CAPTURE
        )
        refused = run_async(_connect_unpinned(server))
        assert _logons(server) == logons, "the password went out past a wrong pin or none"
        opted_out = subprocess.run(
            [*probe, str(rdp_profile(server, tmp_path, "off", cert_fingerprint="", verify=False))], **_CAPTURE
        )
    assert server.cert_fingerprint == shipped
    where = f"{server.host}:{server.port}"
    assert pin.returncode == 0 and f'cert_fingerprint = "{shipped}"' in pin.stdout, pin.stdout + pin.stderr
    lines = probe_passed(pinned, ("RDP connect", "RDP first_frame", "RDP desktop_ready"))
    assert not any("NOT verified" in line for line in lines), lines
    assert logons >= 1
    assert other.returncode == 1, other.stdout + other.stderr[-2000:]
    assert "FAIL  gateway RDP connect: tls_error" in other.stdout, other.stdout
    # the fix is the pin, not the CA file that TLS-verifying protocols name
    pin_fix = f"check it, then put the line from `gateload pin --protocol rdp {where}`"
    assert f"not gateway.cert_fingerprint: {pin_fix}" in other.stdout
    assert "ca_file" not in other.stdout, other.stdout
    assert unpinned.returncode == 1, unpinned.stdout + unpinned.stderr[-2000:]
    assert "FAIL  gateway RDP certificate not pinned (gateway.cert_fingerprint unset)" in unpinned.stdout
    assert f"gateload pin --protocol rdp {where}" in unpinned.stdout
    assert classify(refused.error) == "tls_error", refused  # and no password went out (above)
    lines = probe_passed(opted_out, ("RDP connect", "RDP first_frame", "RDP desktop_ready"))
    assert any(
        line.startswith("warn") and "RDP certificate NOT verified (gateway.verify_host_key = false)" in line
        for line in lines
    ), lines


async def _connect_unpinned(server: Xrdp) -> Timed[Any]:
    """An RDP connect that verifies the certificate with no pin (what an unpinned profile makes)."""
    user, password = server.accounts[0]
    desk = RDPDesktop(server.host, server.port, user, password, timeout_s=10.0)
    try:
        return await timed(desk.connect(), 15.0)
    finally:
        desk.abort()


def _logons(server: Xrdp) -> int:
    """Logons whose credentials reached xrdp so far (its log: one line each)."""
    log = server.log_files[0]
    return log.read_text(errors="replace").count(LOGON_LINE) if log.exists() else 0


@pytest.mark.load
def test_production_defaults_more_users_than_pending_connections_are_classified(tmp_path: Path) -> None:
    """Debian's shipped xrdp listens with a backlog of 2; 12 users at once: whatever fails is a
    classified failure the catalogue declares, never a crash, and the desktops that came up work."""
    users = 12
    with xrdp("xrdp-production", accounts=users, relaxed=False) as server:
        profile = rdp_profile(server, tmp_path, "production")
        run = run_users(profile, users, 15.0)
        passwords = [p for _, p in server.accounts]
    print(summary(as_frame(run)), failures(run))
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


def test_pin_of_a_closed_port_is_one_line_exit_2() -> None:
    done = subprocess.run([GATELOAD, "pin", "--protocol", "rdp", f"127.0.0.1:{free_port()}"], **_CAPTURE)
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr.startswith("gateload: error: no certificate from 127.0.0.1:")
        and done.stderr.count("\n") == 1
    )
    assert "connection refused" in done.stderr
