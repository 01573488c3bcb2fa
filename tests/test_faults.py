"""Fault injection: the farm breaks on purpose, the harness keeps measuring, the analysis finds it.

Two layers:

- in process, per fault kind, what a client sees on the wire (fast and exact);
- per fault kind, a short headless ``locust`` run of ``HomeofficeUser`` against a farm subprocess with
  the fault injected through the admin endpoint: the run completes, the failures carry the right
  error class and server, users recover after the fault window (successes on that server again), and
  ``gateload.analysis.faults`` finds a window on that server overlapping the injected one.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pandas as pd
import pytest

from gateload.analysis.faults import FaultWindow, detect_faults, overlaps
from gateload.analysis.runs import load_run
from gateload.targets.profile import Profile
from gateload.targets.reference.farm import ReferenceFarm
from gateload.targets.reference.faults import FaultClient
from gateload.targets.reference.harness import FarmProcess, portal_login, portal_ticket, write_profile_variant

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "homeoffice.py"

# A three-server farm, so that a fault on one server hits a third of the users, with fast service
# times and a workload of short sessions: a 12 s run holds dozens of sessions. Three, not two: the
# farm's one round-robin cursor serves the portal and the gateway, and with two servers and two picks
# per session a few users settle into "portal on one server, SSH on the other".
FARM = {
    "farm.accounts": 20,
    "farm.servers.0.count": 3,
    "farm.service.distribution": "constant",
    "farm.service.portal_page_ms": 1.0,
    "farm.service.portal_login_ms": 1.0,
    "farm.service.portal_launch_ms": 1.0,
    "farm.service.ssh_auth_ms": 1.0,
    "farm.service.keystroke_ms": 1.0,
    "farm.service.screen_update_ms": 1.0,
    "farm.service.tunnel_request_ms": 1.0,
    "farm.service.sftp_mb_per_s": 20.0,
}
WORKLOAD = {
    "workload.activities_per_session": 8,
    "workload.think_min_s": 0.2,
    "workload.think_max_s": 0.4,
    "workload.typing_interval_ms": 20.0,
    "workload.burst_keys": 4,
    "workload.screen_bursts": 2,
    "workload.screen_bytes": 512,
    "workload.timeout_s": 2.0,
}
USERS = 9
RUN_S = 12
# After Locust has spawned every user, past the detector's settle time (2 s), which ignores slowness. Not
# from the launch: on a busy machine Locust took 3 s to start, and a stall then fell in the ramp, unseen.
FAULT_START_S = 2.5
SPAWNED = "All users spawned"
FAULT_S = 3.0
STALL_RUN_S = 24


# --- in process: what a client sees -----------------------------------------------------------------


def run(profile: Profile, scenario: Callable[[ReferenceFarm], Any]) -> Any:
    async def main() -> Any:
        async with ReferenceFarm(profile, seed=3) as farm:
            return await scenario(farm)

    return asyncio.run(main())


def _jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)


def _inject(farm: ReferenceFarm, kind: str, duration_s: float, **params: Any) -> dict[str, Any]:
    """Inject a fault in process, as the admin endpoint does."""
    from gateload.targets.reference.faults import parse_fault

    assert farm.context is not None and farm.context.faults is not None
    spec = parse_fault({"kind": kind, "duration_s": duration_s, **params}, farm.effective_profile.server_ids)
    faults = farm.context.faults
    return faults.describe(faults.add(spec, "test"))


async def _ssh(farm: ReferenceFarm, launch: dict[str, Any]) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        farm.gateway_port,
        username=launch["username"],
        password=launch["ticket"],
        known_hosts=None,
        client_keys=None,
        agent_path=None,
    )


def test_http_503_storm_hits_the_chosen_server_only(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        _inject(farm, "http_503", 30, server="old-02")
        seen: dict[str, set[int]] = {}
        async with aiohttp.ClientSession(cookie_jar=_jar()) as http:
            for _ in range(8):  # round-robin: both servers get new sessions
                http.cookie_jar.clear()
                async with http.get(f"{farm.portal_url}/login") as r:
                    seen.setdefault(r.headers["X-Gateload-Server"], set()).add(r.status)
        assert seen == {"old-01": {200}, "old-02": {503}}
        assert farm.metrics_snapshot()["servers"]["old-02"]["refused"]["portal"] >= 4

    run(fast_profile(**{"farm__servers__0__count": 2}), scenario)


def test_auth_fail_refuses_portal_and_gateway_logins_until_it_ends(
    fast_profile: Callable[..., Profile],
) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        account = next(iter(farm.state.accounts.values()))
        launch = await portal_ticket(farm.portal_url, account)  # before the fault
        fault = _inject(farm, "auth_fail", 0.6, server="*")
        with pytest.raises(AssertionError, match="POST /login: 401"):
            await portal_ticket(farm.portal_url, account)
        with pytest.raises(asyncssh.PermissionDenied):
            await _ssh(farm, launch)
        await asyncio.sleep(max(0.0, fault["planned_end"] - time.time()) + 0.1)
        async with await _ssh(farm, launch) as conn:  # the ticket was not consumed by the refusal
            assert (await conn.run("echo back", check=True)).stdout == "back\n"

    run(fast_profile(), scenario)


def test_stall_holds_operations_until_it_ends(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> float:
        fault = _inject(farm, "stall", 0.8, server="*")
        async with (
            aiohttp.ClientSession(cookie_jar=_jar()) as http,
            http.get(f"{farm.portal_url}/login") as r,
        ):
            assert r.status == 200
        return time.time() - fault["planned_end"]

    late = run(fast_profile(), scenario)
    assert late >= -0.05  # answered only once the stall was over (and not much later)
    assert late < 2.0


def test_reset_drops_open_ssh_connections_with_a_tcp_reset(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        account = next(iter(farm.state.accounts.values()))
        conn = await _ssh(farm, await portal_ticket(farm.portal_url, account))
        _inject(farm, "reset", 5, server="*")
        await asyncio.wait_for(conn.wait_closed(), 5)
        with pytest.raises((asyncssh.ConnectionLost, asyncssh.ChannelOpenError, OSError)):
            await conn.run("echo after", check=True)
        assert farm.metrics_snapshot()["faults"]["ssh_resets"] == 1
        # new connections are accepted while the fault lasts (it resets only at its ticks)
        async with await _ssh(farm, await portal_ticket(farm.portal_url, account)) as again:
            assert (await again.run("echo again", check=True)).stdout == "again\n"

    run(fast_profile(), scenario)


def test_down_server_drops_its_sessions_and_comes_back_empty(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        accounts = list(farm.state.accounts.values())
        async with aiohttp.ClientSession(cookie_jar=_jar()) as http:
            await portal_login(http, farm.portal_url, accounts[0])  # pinned to old-01 (first pick)
            async with http.get(f"{farm.portal_url}/api/apps") as r:
                assert r.headers["X-Gateload-Server"] == "old-01" and r.status == 200
            fault = _inject(farm, "down", 0.8, server="old-01")
            async with http.get(f"{farm.portal_url}/api/apps") as r:
                assert (r.status, r.headers["X-Gateload-Server"]) == (503, "old-01")
            async with aiohttp.ClientSession(cookie_jar=_jar()) as fresh:
                for _ in range(3):  # new sessions go to the servers that are up
                    fresh.cookie_jar.clear()
                    async with fresh.get(f"{farm.portal_url}/login") as r:
                        assert r.status == 200 and r.headers["X-Gateload-Server"] != "old-01"
            await asyncio.sleep(max(0.0, fault["planned_end"] - time.time()) + 0.1)
            async with http.get(f"{farm.portal_url}/api/apps") as r:
                assert r.status == 401  # back, but it forgot its sessions: log in again

    run(fast_profile(), scenario)


def test_slow_sftp_multiplies_transfer_time(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> tuple[float, float]:
        account = next(iter(farm.state.accounts.values()))
        async with (
            await _ssh(farm, await portal_ticket(farm.portal_url, account)) as conn,
            conn.start_sftp_client() as sftp,
        ):
            times = []
            for slow in (False, True):
                if slow:
                    _inject(farm, "slow_sftp", 30, server="*", factor=10)
                start = time.perf_counter()
                async with sftp.open("memo.pdf", "rb") as fh:
                    await fh.read()
                times.append(time.perf_counter() - start)
            return times[0], times[1]

    # 65536 bytes at 5 MB/s: 13 ms; ten times slower: 131 ms
    fast, slow = run(fast_profile(farm__service__sftp_mb_per_s=5.0), scenario)
    assert slow >= 0.131 * 0.95
    assert slow > 4 * fast


def test_profile_schedule_runs_from_farm_start_and_is_logged(fast_profile: Callable[..., Profile]) -> None:
    schedule = [
        {"kind": "http_503", "server": "old-02", "start_s": 0.3, "duration_s": 0.4},
        {"kind": "stall", "start_s": 5.0, "duration_s": 1.0},
    ]

    async def scenario(farm: ReferenceFarm) -> None:
        started = time.time()
        faults = farm.context.faults  # type: ignore[union-attr]
        assert [f["state"] for f in faults.snapshot()["scheduled"]] == ["scheduled", "scheduled"]
        await asyncio.sleep(0.45)
        active = faults.snapshot()["active"]
        assert [(f["kind"], f["server"], f["source"]) for f in active] == [("http_503", "old-02", "profile")]
        async with aiohttp.ClientSession() as http, http.get(f"{farm.portal_url}/metrics") as r:
            text = await r.text()
        assert 'gateload_fault_active{id="1",kind="http_503",server="old-02"}' in text
        await asyncio.sleep(0.45)
        log = faults.snapshot()["log"]
        assert [(e["event"], e["kind"]) for e in log] == [("start", "http_503"), ("end", "http_503")]
        assert log[0]["t"] - started == pytest.approx(0.3, abs=0.15)
        assert log[1]["t"] - log[0]["t"] == pytest.approx(0.4, abs=0.1)
        assert farm.metrics_snapshot()["servers"]["old-02"]["refused"]["portal"] == 0  # no traffic came

    profile = fast_profile(farm__faults=schedule)
    assert [f.kind for f in profile.farm.faults] == ["http_503", "stall"]  # type: ignore[union-attr]
    run(profile, scenario)


def test_admin_endpoint_schedules_lists_and_clears(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        client = FaultClient.for_profile(farm.effective_profile)

        def calls() -> None:
            f = client.inject("down", 60, server="old-03", start_s=30)
            assert f["state"] == "scheduled" and f["source"] == "admin"
            g = client.inject("slow_sftp", 60, factor=3)
            assert g["state"] == "active"
            for body, why in (
                ({"kind": "meltdown", "duration_s": 1}, "'kind'"),
                ({"kind": "stall"}, "'duration_s' is missing"),
                ({"kind": "stall", "duration_s": -1}, "duration_s"),
                ({"kind": "stall", "duration_s": 1, "server": "old-99"}, "old-99"),
                ({"kind": "stall", "duration_s": 1, "colour": 1}, "unknown key 'colour'"),
                ({"kind": "auth_fail", "duration_s": 1, "percent": 150}, "percent"),
                ([1, 2], "JSON object"),
            ):
                status, answer = client.request("POST", body=body)
                assert status == 400 and why in answer["error"], (body, answer)
            state = client.state()
            assert [f["kind"] for f in state["active"]] == ["slow_sftp"]
            assert [f["kind"] for f in state["scheduled"]] == ["down"]
            assert client.request("DELETE", f"/admin/faults/{g['id']}")[1] == {"ended": 1}
            assert client.request("DELETE", "/admin/faults/999")[0] == 404
            assert client.clear() == 1
            state = client.state()
            assert state["active"] == [] and state["scheduled"] == []
            assert [e["event"] for e in state["log"]] == ["start", "end"]  # the scheduled one never began

        await asyncio.get_running_loop().run_in_executor(None, calls)
        assert all(s.fault is None for s in farm.context.cluster.servers)  # type: ignore[union-attr]

    run(fast_profile(), scenario)


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        (TimeoutError("timed out"), "timeout"),
        (ConnectionRefusedError(111, "refused"), "refused"),
        (ConnectionResetError(104, "reset"), "reset"),
        (None, "other"),
    ],
)
def test_portal_failures_wrapped_by_the_http_client_keep_their_class(
    original: BaseException | None, expected: str
) -> None:
    """FastHttpSession (geventhttpclient, max_retries 0) raises RetriesExceeded around the real error."""
    from geventhttpclient.useragent import RetriesExceeded

    from gateload.locustfiles.lib.errors import classify, safe_error

    wrapped = RetriesExceeded("http://127.0.0.1:1/login?next=x", 0, original=original)
    assert classify(wrapped) == expected
    assert str(safe_error(wrapped)).startswith(expected) and "127.0.0.1" not in str(safe_error(wrapped))


def test_report_shows_fault_windows_and_quiet_runs_have_none(tmp_path: Path) -> None:
    from gateload.analysis.synthetic import SynthSpec, write_run
    from gateload.cli import main

    spec = SynthSpec(steps=((10, 30.0), (20, 30.0)), ramp_s=2.0, usl=(30.0, 0.03, 0.001), paced_rate=0.5)
    quiet = write_run(spec.with_(run_id="quiet"), tmp_path / "res")
    stalled = write_run(spec.with_(run_id="stalled", stall=(40.0, 3.0)), tmp_path / "res")
    assert detect_faults(load_run(quiet)) == []
    windows = detect_faults(load_run(stalled))
    origin = spec.start_epoch
    assert windows and all(overlaps(w, origin + 40.0, origin + 43.0) for w in windows)
    assert main(["report", str(stalled), "--out", str(tmp_path / "report"), "--bootstrap", "100"]) == 0
    verdict = json.loads((tmp_path / "report" / "verdict.json").read_text())
    assert len(verdict["metrics"]["faults"]["runs"]["run"][0]["windows"]) == len(windows)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<h2>Faults</h2>" in html and windows[0].server in html.split("<h2>Faults</h2>")[1]
    assert "## Faults" in (tmp_path / "report" / "summary.md").read_text()


def test_fault_windows_say_whether_the_statistics_include_them(tmp_path: Path) -> None:
    # MSER-5 cuts a stall early in a step as that step's warm-up; one in the last seconds of the run
    # stays in the steady part. The warning and the Faults table must say which, not assume.
    from gateload.analysis.faults import fault_metrics, fault_warnings
    from gateload.analysis.metrics import analyze_run
    from gateload.analysis.synthetic import SynthSpec, write_run

    spec = SynthSpec(steps=((10, 30.0), (20, 30.0)), ramp_s=2.0, usl=(30.0, 0.03, 0.001), paced_rate=0.5)
    measured = {}
    for name, at in (("early", 40.0), ("late", 57.0)):
        rs = analyze_run(
            load_run(write_run(spec.with_(run_id=name, stall=(at, 3.0)), tmp_path / "res")), n_boot=50
        )
        metrics = fault_metrics({"run": [rs]})
        windows = metrics["runs"]["run"][0]["windows"]
        steady = [(st.window.steady_start, st.window.steady_end) for st in rs.steps]
        assert windows
        for w in windows:  # the flag is the overlap with a step's steady part, checked here by hand
            assert w["measured"] == any(w["start"] < b and w["end"] > a for a, b in steady), (name, w, steady)
        measured[name] = {w["measured"] for w in windows}
        (warning,) = fault_warnings(metrics)
        measured[name + "_warning"] = warning
    assert measured["early"] == {False} and "its statistics exclude them" in measured["early_warning"]
    assert measured["late"] == {True} and "its statistics include them" in measured["late_warning"]
    mixed = {
        "runs": {
            "after": [
                {
                    "run": "r",
                    "windows": [
                        {"server": "new-01", "start": 5.0, "end": 8.0, "measured": False},
                        {"server": "new-02", "start": 40.0, "end": 43.0, "measured": True},
                    ],
                }
            ]
        }
    }
    assert fault_warnings(mixed) == [
        "after r: 2 fault window(s) (new-01 5-8 s, new-02 40-43 s); "
        "1 of them in the measured steady windows: its statistics include those (see Faults)"
    ]


def test_report_of_a_fault_run_that_never_settles_shows_its_faults_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A short fault run whose latency keeps climbing: no steady state. check judges nothing (a verdict
    # needs one); report draws it, marked, so its fault windows are not lost with its statistics.
    from gateload.analysis.synthetic import SynthSpec, write_run
    from gateload.cli import main

    spec = SynthSpec(
        steps=((20, 30.0),), ramp_s=2.0, usl=(30.0, 0.03, 0.001), paced_rate=0.5, trend_per_s=0.1
    )
    run = write_run(spec.with_(run_id="trending", stall=(15.0, 3.0)), tmp_path / "res")
    windows = detect_faults(load_run(run))
    assert {w.server for w in windows if overlaps(w, spec.start_epoch + 15.0, spec.start_epoch + 18.0)} >= {
        "old-01",
        "old-02",
        "old-03",
        "old-04",
    }
    acc = tmp_path / "acc.toml"
    acc.write_text("[errors]\nmax_rate = 0.1\n")
    assert main(["check", str(run), "--acceptance", str(acc), "--bootstrap", "100"]) == 3
    assert "never reached a steady state" in capsys.readouterr().out
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out), "--bootstrap", "100"]) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert [r["steady"] for r in verdict["runs"]["run"]] == [False]
    assert any("no steady state in any step" in w for w in verdict["warnings"])
    assert len(verdict["metrics"]["faults"]["runs"]["run"][0]["windows"]) == len(windows)
    summary = (out / "summary.md").read_text()
    assert "**NO STEADY STATE**" in summary and "## Faults" in summary
    assert "NO STEADY STATE" in (out / "report.html").read_text()


# --- with Locust: the run goes on, failures are attributed, users recover, the analysis sees it -------


@pytest.fixture(scope="module")
def fault_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmProcess]:
    """A two-server farm of its own (faults must not hit anybody else's tests)."""
    folder = tmp_path_factory.mktemp("fault-farm")
    variant = write_profile_variant("reference-before", folder / "profile.toml", FARM)
    with FarmProcess(variant, state_dir=folder / "state") as farm:
        yield farm


def test_gateload_fault_command(fault_farm: FarmProcess, capsys: pytest.CaptureFixture[str]) -> None:
    from gateload.cli import main

    profile = str(fault_farm.profile_path)
    assert (
        main(["fault", "--profile", profile, "inject", "http_503", "--server", "old-03", "--duration", "30"])
        == 0
    )
    assert "http_503 on old-03 (active)" in capsys.readouterr().out
    assert main(["fault", "--profile", profile, "list"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert [(f["kind"], f["server"]) for f in state["active"]] == [("http_503", "old-03")]
    assert main(["fault", "--profile", profile, "clear"]) == 0
    assert capsys.readouterr().out.strip() == "ended 1 fault(s)"
    assert (
        main(["fault", "--profile", profile, "inject", "stall", "--server", "old-09", "--duration", "1"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'server' is 'old-09'" in err
    token = (Path(fault_farm.profile.farm.state_dir) / "admin_token").read_text().strip()  # type: ignore[union-attr]
    assert token not in err


@dataclass
class FaultRun:
    run_dir: Path
    meta: dict[str, Any]
    samples: pd.DataFrame
    fault: dict[str, Any]  # as the farm logged it: started_at, ended_at (epoch)
    windows: list[FaultWindow]

    def during(self) -> pd.DataFrame:
        s = self.samples
        return s[(s.t_start >= self.fault["started_at"]) & (s.t_start <= self.fault["ended_at"])]

    def after(self, server: str) -> pd.DataFrame:
        """Successful non-SESSION operations on ``server`` that started after the fault ended."""
        s = self.samples
        return s[
            (s.t_start > self.fault["ended_at"]) & s.success & (s.server == server) & (s.type != "SESSION")
        ]

    def failures(self) -> pd.DataFrame:
        s = self.samples
        return s[~s.success & (s.type != "SESSION")]


def run_with_fault(
    farm: FarmProcess,
    tmp: Path,
    kind: str,
    *,
    workload: dict[str, Any] | None = None,
    run_s: int = RUN_S,
    **params: Any,
) -> FaultRun:
    """One bounded headless run of HomeofficeUser with ``kind`` injected FAULT_START_S s after its ramp."""
    profile = write_profile_variant(farm.profile_path, tmp / "profile.toml", {**WORKLOAD, **(workload or {})})
    client = FaultClient.for_profile(farm.profile)
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(USERS)]
    cmd += ["-r", str(USERS), "-t", f"{run_s}s", "--profile", str(profile), "--results-dir", str(tmp / "res")]
    cmd += ["--label", kind, "--exit-code-on-error", "0", "HomeofficeUser"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    spawned, lines = threading.Event(), list[str]()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if SPAWNED in line:
                spawned.set()
        spawned.set()  # ended before spawning: the assert below shows why

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        spawned.wait(60)
        assert any(SPAWNED in line for line in lines), "".join(lines)[-3000:]
        fault = client.inject(kind, FAULT_S, start_s=FAULT_START_S, **params)
        returncode = proc.wait(timeout=run_s + 90)
    finally:
        proc.kill()
        proc.wait()
    reader.join(timeout=10)
    stderr = "".join(lines)
    assert returncode == 0, (returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]  # the run went on and shut down cleanly
    logged = next(f for f in client.state()["ended"] if f["id"] == fault["id"])
    run_dir = next((tmp / "res" / kind).iterdir())
    meta = json.loads((run_dir / "meta.json").read_text())
    assert logged["started_at"] < meta["ended_at"] - 2.0, "the fault must end inside the run, with time left"
    samples = pd.read_parquet(run_dir / "samples.parquet")
    return FaultRun(run_dir, meta, samples, logged, detect_faults(load_run(run_dir)))


#: Operations whose failure can come before any answer names the server that failed them.
FIRST_CONTACT = {"HTTP GET /login", "SSH connect", "SSH reconnect"}


def assert_common(r: FaultRun, server: str, classes: set[str]) -> None:
    """The run completed; failures during the fault are of ``classes`` on ``server``; it was seen."""
    assert r.meta["status"] == "completed" and r.meta["sample_count"] == len(r.samples)
    bad = r.failures()
    # a session caught by the fault may notice it at its next step, a few seconds later
    hit = bad[(bad.t_start >= r.fault["started_at"] - 0.5) & (bad.t_start <= r.fault["ended_at"] + 5.0)]
    assert len(hit) >= 3, bad[["t_start", "type", "name", "error", "server"]]
    # No answer has named a server yet when a first contact fails (a portal session's first request, an
    # SSH connect reset before the banner): those stay unknown, every other failure is on the server.
    unknown = hit[hit["server"].isna()]
    ops = {f"{t} {n}" for t, n in zip(unknown["type"], unknown["name"], strict=True)}
    assert ops <= FIRST_CONTACT, unknown[["type", "name", "error"]]
    assert set(hit["server"].dropna()) == {server}, hit[["type", "name", "error", "server"]]
    assert set(hit["error"]) <= classes and set(hit["error"]) & classes, hit["error"].value_counts()
    assert len(bad) == len(hit), "no failures outside the fault window"
    mine = [
        w for w in r.windows if w.server == server and overlaps(w, r.fault["started_at"], r.fault["ended_at"])
    ]
    assert mine, [w.as_dict() for w in r.windows]
    assert all(w.server == server for w in r.windows), [w.as_dict() for w in r.windows]


@pytest.mark.load
def test_locust_run_through_connection_resets(fault_farm: FarmProcess, tmp_path: Path) -> None:
    r = run_with_fault(fault_farm, tmp_path, "reset", server="old-02", every_s=1.0)
    assert_common(r, "old-02", {"reset"})
    assert set(r.failures()["type"]) <= {"SSH", "SFTP", "TUNNEL"}  # the portal was not touched
    assert (r.samples.name == "reconnect").any(), "users reconnect with a new ticket"
    assert len(r.after("old-02").query("type == 'SSH'")) > 0, "SSH work on old-02 again after the fault"
    assert "errors" in next(w for w in r.windows if w.server == "old-02").kinds


@pytest.mark.load
def test_locust_run_through_a_stall(fault_farm: FarmProcess, tmp_path: Path) -> None:
    # Operations wait out the 3 s stall: with a timeout longer than it, every one that started in it ends
    # late instead of some timing out and sending their users into backoff (which on a busy machine left
    # no slow success to show the latency, only the timeouts).
    # To MSER-5 the stall is a transient: it cuts it, and the operations that waited it out, as warm-up.
    # In 12 s runs that cut once came at 7 s of 12 (second half: the report then marks NO STEADY STATE
    # and has no statistics to stand on), so this run is long enough for the settled rest to outweigh it.
    r = run_with_fault(
        fault_farm,
        tmp_path,
        "stall",
        server="old-01",
        workload={"workload.timeout_s": 6.0},
        run_s=STALL_RUN_S,
    )
    s = r.samples
    stalled = s[(s.server == "old-01") & (s.type != "SESSION") & (s.t_start >= r.fault["started_at"])]
    stalled = stalled[stalled.t_start < r.fault["ended_at"]]
    # what started on old-01 during the stall either timed out or ended after it
    ends = stalled.t_start + stalled.duration_ms / 1000.0
    assert ((stalled.error == "timeout") | (ends >= r.fault["ended_at"] - 0.1)).all()
    assert r.meta["status"] == "completed"
    bad = r.failures()
    assert set(bad["error"]) <= {"timeout"}
    # A session's first request names no server until an answer does: one that timed out stays unknown
    unknown = bad[bad["server"].isna()]
    assert set(bad["server"].dropna()) <= {"old-01"} and set(unknown["name"]) <= {"GET /login"}, unknown
    assert len(r.after("old-01")) > 0
    window = next(w for w in r.windows if w.server == "old-01")
    assert overlaps(window, r.fault["started_at"], r.fault["ended_at"]) and "latency" in window.kinds
    assert window.peak_latency_factor > 20
    assert all(w.server == "old-01" for w in r.windows), [w.as_dict() for w in r.windows]
    # the report of the run shows it
    from gateload.cli import main

    assert main(["report", str(r.run_dir), "--out", str(tmp_path / "report"), "--bootstrap", "100"]) == 0
    verdict = json.loads((tmp_path / "report" / "verdict.json").read_text())
    (found,) = verdict["metrics"]["faults"]["runs"]["run"]
    assert [w["server"] for w in found["windows"]] == ["old-01"]
    assert overlaps(found["windows"][0], r.fault["started_at"], r.fault["ended_at"])
    assert any("fault window" in w for w in verdict["warnings"])
    assert "<h2>Faults</h2>" in (tmp_path / "report" / "report.html").read_text()


@pytest.mark.load
def test_locust_run_through_auth_failures(fault_farm: FarmProcess, tmp_path: Path) -> None:
    r = run_with_fault(fault_farm, tmp_path, "auth_fail", server="old-02")
    assert_common(r, "old-02", {"http_401", "auth_failed"})
    after = r.after("old-02")
    assert (after.name == "POST /login").any() or (after.name == "connect").any(), "logins succeed again"
    sessions = r.samples[(r.samples.type == "SESSION") & (r.samples.name == "logon")]
    late = sessions[sessions.t_start > r.fault["ended_at"]]
    assert late.success.all() and len(late) > 0  # every logon after the window succeeded


@pytest.mark.load
def test_locust_run_through_a_503_storm(fault_farm: FarmProcess, tmp_path: Path) -> None:
    r = run_with_fault(fault_farm, tmp_path, "http_503", server="old-01")
    assert_common(r, "old-01", {"http_503"})
    assert set(r.failures()["type"]) == {"HTTP"}
    assert (r.after("old-01").type == "HTTP").any(), "the portal answers on old-01 again"


@pytest.mark.load
def test_locust_run_through_a_server_dying_and_coming_back(fault_farm: FarmProcess, tmp_path: Path) -> None:
    r = run_with_fault(fault_farm, tmp_path, "down", server="old-02")
    # 401: a portal session pinned to old-02 whose SSH was elsewhere logs off after old-02 forgot it;
    # tunnel_refused: a session's port forward asked of old-02 as it went down (busy-core run 25)
    assert_common(r, "old-02", {"reset", "http_503", "http_401", "tunnel_refused"})
    during = r.during()
    assert not (during.success & (during.server == "old-02") & (during.type != "SESSION")).any()
    assert (during.success & (during.server == "old-01")).sum() > 10, "the other server carried on"
    after = r.after("old-02")
    assert {"SSH", "HTTP"} <= set(after.type), "new portal and SSH sessions on old-02 once it is back"


@pytest.mark.load
def test_locust_run_through_slow_sftp(fault_farm: FarmProcess, tmp_path: Path) -> None:
    sftp_heavy = {
        "workload.mix": {"sftp_get": 3.0, "sftp_put": 1.0, "exec": 1.0},
        "workload.think_min_s": 0.05,
        "workload.think_max_s": 0.1,
    }
    r = run_with_fault(fault_farm, tmp_path, "slow_sftp", workload=sftp_heavy, server="old-01", factor=30)
    s = r.samples
    assert r.meta["status"] == "completed" and not (~s.success).any()
    sftp = s[(s.type == "SFTP") & (s.server == "old-01")]
    inside = sftp[(sftp.t_start > r.fault["started_at"]) & (sftp.t_start < r.fault["ended_at"] - 0.5)]
    outside = sftp[sftp.t_start > r.fault["ended_at"]]
    assert len(inside) >= 3 and len(outside) >= 3
    assert inside.duration_ms.median() > 5 * outside.duration_ms.median()
    window = next(w for w in r.windows if w.server == "old-01")
    assert overlaps(window, r.fault["started_at"], r.fault["ended_at"])
    assert "latency" in window.kinds and {"SFTP get", "SFTP put"} & set(window.ops)
    assert not [w for w in r.windows if w.server != "old-01"], [w.as_dict() for w in r.windows]
