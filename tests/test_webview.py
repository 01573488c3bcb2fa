"""The web UI's "gateload" tab: the live aggregator with known samples, the recorder's hook, and a real
``locust -f locustfiles/homeoffice.py`` with its web UI against the reference farm."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import pytest
from locust.env import Environment
from needs import skip_or_fail

from gateload.locustfiles.lib import webview
from gateload.locustfiles.lib.recorder import HOT_COLUMNS, Recorder
from gateload.locustfiles.lib.webview import LiveView
from gateload.targets.profile import load_profile

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "homeoffice.py"

NOW = 1_000_000.5  # the view's clock in the unit tests; the current second is 1_000_000
LATE_S = 0.0078125  # 2**-7 s: exactly 7.8125 ms, so "from intended start" values are exact


def sample(
    kind: str,
    name: str,
    ms: float,
    *,
    done: float,
    ok: bool = True,
    server: str | None = None,
    t_intended: float = math.nan,
) -> dict[str, Any]:
    """One recorder row that completes at ``done`` (epoch seconds)."""
    return {
        "t_start": done - ms / 1000.0,
        "t_intended": t_intended,
        "duration_ms": ms,
        "type": kind,
        "name": name,
        "success": ok,
        "error": None if ok else "timeout",
        "bytes": 0,
        "user_id": 1,
        "user_count": 7,
        "server": server,
    }


def columns(rows: list[dict[str, Any]]) -> dict[str, list]:
    return {c: [r[c] for r in rows] for c in HOT_COLUMNS}


def known_samples() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two batches: the first completed 100 s ago (run only), the second 5 s ago (also the window)."""
    old, recent = NOW - 100, NOW - 5
    first = [sample("SESSION", "logon", ms, done=old) for ms in (5000.0, 6000.0)]
    first += [sample("SESSION", "session", 60_000.0, done=old, server="gw-1")]  # not an operation
    first += [sample("HTTP", "portal", 10.0, done=old, server="gw-1") for _ in range(4)]
    second = [sample("SESSION", "logon", 100.0 * k, done=recent, server="gw-2") for k in range(1, 11)]
    second += [sample("SESSION", "logon", 50.0, done=recent, ok=False)]
    second += [sample("SESSION", "session", 30_000.0, done=recent) for _ in range(3)]
    second += [sample("SESSION", "session", 20_000.0, done=recent, ok=False)]
    for k in range(1, 21):  # 1..20 ms; the even ones started 7.8125 ms after their plan
        start = recent - k / 1000.0
        planned = start - LATE_S if k % 2 == 0 else math.nan
        second.append(sample("SSH", "keystroke", float(k), done=recent, t_intended=planned))
    second += [sample("SSH", "keystroke", 5000.0, done=recent, ok=False, server="gw-1")]
    for server, n in (("gw-1", 5), ("gw-2", 3), ("gw-3", 3)):
        second += [sample("HTTP", "portal", 20.0, done=recent, server=server) for _ in range(n)]
    second += [sample("HTTP", "portal", 20.0, done=recent, server=None)]  # server unknown: no share
    return first, second


def fed_view() -> LiveView:
    view = LiveView(users=lambda: 7, servers=lambda: ["gw-1", "gw-2", "gw-3", "gw-4"], clock=lambda: NOW)
    first, second = known_samples()
    view.add_batch("run-1", columns(first))
    view.add_batch("run-1", columns(second))
    return view


def test_known_samples_give_exact_counts_shares_and_percentiles() -> None:
    snap = fed_view().snapshot()
    assert snap.run_id == "run-1" and snap.users == 7
    assert snap.run == {"started": 12, "completed": 4, "logons_failed": 1, "sessions_failed": 1}
    assert snap.recent == {"started": 10, "completed": 3, "logons_failed": 1, "sessions_failed": 1}

    # The window: exact nearest-rank percentiles (smallest value with >= q of the values at or below).
    logon = snap.recent_latency["logon"]
    assert (logon.count, logon.p50, logon.p95) == (10, 500.0, 1000.0)
    echo = snap.recent_latency["echo"]
    assert (echo.count, echo.p50, echo.p95) == (20, 10.0, 19.0)  # the failed 5 s keystroke is not in
    # odd k: k ms; even k: k + 7.8125 ms. Sorted, the 10th is 13.8125 and the 19th 25.8125.
    intended = snap.recent_latency["echo_intended"]
    assert (intended.count, intended.p50, intended.p95) == (20, 13.8125, 25.8125)

    # The run: the same nearest ranks, read from log buckets (within 0.2 %).
    run_logon = snap.run_latency["logon"]
    assert run_logon.count == 12  # 100..1000 ms and 5000, 6000: the 6th is 600, the 12th 6000
    assert run_logon.p50 == pytest.approx(600.0, rel=0.002) and run_logon.p95 == pytest.approx(
        6000.0, rel=0.002
    )
    run_echo = snap.run_latency["echo_intended"]
    assert run_echo.count == 20
    assert run_echo.p50 == pytest.approx(13.8125, rel=0.002) and run_echo.p95 == pytest.approx(
        25.8125, rel=0.002
    )

    # Servers: operations only (no SESSION rows, no unknown server); gw-4 is in the profile, unused.
    assert snap.run_servers == {"gw-1": 10, "gw-2": 3, "gw-3": 3, "gw-4": 0}
    assert snap.recent_servers == {"gw-1": 6, "gw-2": 3, "gw-3": 3, "gw-4": 0}
    assert snap.share == {"gw-1": 0.625, "gw-2": 0.1875, "gw-3": 0.1875, "gw-4": 0.0}
    assert snap.share_of_even == {"gw-1": 2.5, "gw-2": 0.75, "gw-3": 0.75, "gw-4": 0.0}


def test_rows_are_the_table_and_json_safe() -> None:
    view = fed_view()
    rows = {r["row"]: r for r in view.rows()}
    keys = {"row", *(k for k, _ in webview.STRUCTURE)}
    assert all(set(r) == keys for r in rows.values())
    assert list(rows) == [
        "users",
        "started",
        "completed",
        "logons_failed",
        "sessions_failed",
        "logon",
        "echo",
        "echo_intended",
        "server:gw-1",
        "server:gw-2",
        "server:gw-3",
        "server:gw-4",
    ]
    assert rows["users"]["recent"] == 7
    assert rows["logon"] | {"metric": None} == {
        "row": "logon",
        "metric": None,
        "recent": 10,
        "recentp50": 500.0,
        "recentp95": 1000.0,
        "run": 12,
        "runp50": pytest.approx(600.0, rel=0.002),
        "runp95": pytest.approx(6000.0, rel=0.002),
        "share": None,
        "shareofeven": None,
    }
    assert rows["echo_intended"]["recentp50"] == 13.81  # ms rounded to 0.01 below 100 ms
    assert (rows["server:gw-2"]["share"], rows["server:gw-2"]["shareofeven"]) == (0.1875, 0.75)
    json.dumps(view.rows(), allow_nan=False)
    # 40 s later the window is empty (no NaN: null), the run unchanged
    later = {r["row"]: r for r in view.rows(now=NOW + 40)}
    assert later["logon"]["recent"] == 0 and later["logon"]["recentp95"] is None
    assert later["logon"]["run"] == 12 and later["server:gw-1"]["recent"] == 0
    json.dumps(list(later.values()), allow_nan=False)
    # before any run: only the users, no servers, nothing undefined
    empty = LiveView(clock=lambda: NOW).rows()
    assert [r["row"] for r in empty][-1] == "echo_intended" and json.dumps(empty, allow_nan=False)


def test_a_new_run_starts_over_and_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    view = fed_view()
    monkeypatch.setattr(webview, "MAX_VALUES_PER_SLOT", 5)
    batch = [sample("SESSION", "logon", 10.0 * k, done=NOW - 1) for k in range(1, 9)]
    view.add_batch("run-2", columns(batch))
    snap = view.snapshot()
    assert snap.run_id == "run-2" and snap.run["started"] == 8 and snap.recent["started"] == 8
    # counts stay exact; the window's percentiles come from the first 5 values of that second
    assert snap.recent_latency["logon"] == webview.Latency(8, 30.0, 50.0)
    assert snap.run_latency["logon"].p95 == pytest.approx(80.0, rel=0.002)  # the run keeps them all
    assert snap.run_servers == {"gw-1": 0, "gw-2": 0, "gw-3": 0, "gw-4": 0}
    # a long run: seconds roll through the ring, which never holds more than RING slots
    for s in range(200):
        view.add_batch("run-2", columns([sample("HTTP", "portal", 1.0, done=NOW + s, server="gw-1")]))
    assert sum(slot is not None for slot in view._ring) == webview.RING
    later = view.snapshot(now=NOW + 199)
    assert later.recent_servers["gw-1"] == webview.WINDOW_S and later.run_servers["gw-1"] == 200


def test_servers_beyond_the_profile_and_beyond_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webview, "MAX_SERVERS", 3)
    view = LiveView(servers=lambda: ["b", "a"], clock=lambda: NOW)
    ops = [sample("HTTP", "portal", 1.0, done=NOW, server=s) for s in ("z", "a", "y", "x", "w", "x", None)]
    view.add_batch("r", columns(ops))
    snap = view.snapshot()
    # the profile's servers in its order, then the others by name; past 3 values (b, a, w): "(other)"
    assert snap.run_servers == {"b": 0, "a": 1, webview.OTHER: 4, "w": 1}
    assert list(snap.run_servers) == ["b", "a", webview.OTHER, "w"]
    assert snap.share[webview.OTHER] == pytest.approx(4 / 6) and sum(snap.share.values()) == pytest.approx(
        1.0
    )


def test_the_recorder_hands_every_written_batch_to_on_batch(tmp_path: Path) -> None:
    env = Environment(user_classes=[])
    env.create_local_runner()
    recorder = Recorder(env, flush_interval=0.05)
    seen: list[tuple[str, int]] = []
    recorder.on_batch = lambda run_id, cols: seen.append((run_id, len(cols["t_start"])))
    recorder.start("r1", tmp_path / "run")
    for i in range(300):
        env.events.request.fire(
            request_type="HTTP",
            name="portal",
            response_time=1.0,
            response_length=0,
            exception=None,
            context={"server": "gw-1"},
        )
        if i % 100 == 99:
            gevent.sleep(0.1)  # let the flusher take a batch
    result = recorder.finish()
    assert result.rows == 300 and result.complete
    assert len(seen) >= 2 and {r for r, _ in seen} == {"r1"} and sum(n for _, n in seen) == 300

    def broken(run_id: str, cols: Any) -> None:
        raise ValueError("a view bug")

    recorder.on_batch = broken  # an error in the view never costs samples
    recorder.start("r2", tmp_path / "run2")
    env.events.request.fire(request_type="HTTP", name="p", response_time=1.0, response_length=0)
    assert recorder.finish().rows == 1


# --- the real thing -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendered_text(url: str, profile_dir: Path) -> str:
    """The page's text as headless Chromium renders it, after its scripts ran and its first polls came."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        skip_or_fail("chromium is not installed (Debian package chromium)")
    argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    argv += [f"--user-data-dir={profile_dir}", "--virtual-time-budget=8000", "--dump-dom", url]
    dom = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=True).stdout
    dom = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)  # text shown, not the page's data
    return html.unescape(re.sub(r"<[^>]+>", "\n", dom))


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.load
def test_the_tab_in_a_real_web_ui_run(reference_farm: Callable[..., Path], tmp_path: Path) -> None:
    profile = reference_farm("reference-before")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "locust.log"
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--web-host", "127.0.0.1"]
    cmd += ["--web-port", str(port), "--profile", str(profile), "--results-dir", str(tmp_path / "res")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--label", "web", "HomeofficeUser"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def get(path: str) -> str:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    def post(path: str, form: dict[str, str]) -> dict[str, Any]:
        data = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(urllib.request.Request(base + path, data=data), timeout=10) as resp:
            return json.loads(resp.read())

    def gateload_rows() -> dict[str, dict[str, Any]] | None:
        body = get("/stats/requests")
        if not body:
            return None
        ours = [e for e in json.loads(body).get("extended_stats", []) if e["key"] == "gateload"]
        assert len(ours) == 1  # Locust caches the response object: our entry is replaced, never added twice
        rows = {r["row"]: r for r in ours[0]["data"]}
        servers = [r for k, r in rows.items() if k.startswith("server:")]
        ready = rows["logon"]["run"] > 0 and rows["echo"]["run"] > 0 and sum(r["run"] for r in servers) > 0
        return rows if ready else None

    try:
        page = wait_until(lambda: get("/"), 30, "the web UI")
        line = next(x for x in page.splitlines() if "window.templateArgs" in x)
        args = json.loads(line.split("=", 1)[1].strip().rstrip(";"))
        assert {"title": "gateload", "key": "gateload"} in args["extended_tabs"]
        table = next(t for t in args["extended_tables"] if t["key"] == "gateload")
        assert [c["key"] for c in table["structure"]] == [k for k, _ in webview.STRUCTURE]

        started = post(
            "/swarm", {"user_count": "6", "spawn_rate": "6", "shape": "none", "profile": str(profile)}
        )
        assert started["success"] is True, started
        rows = wait_until(gateload_rows, 30, "logons, keystrokes and server operations in the gateload tab")
        assert 0 < rows["users"]["recent"] <= 6
        logon = rows["logon"]
        assert logon["run"] == rows["started"]["run"] > 0 and logon["recent"] > 0
        assert 0 < logon["runp50"] <= logon["runp95"] < 30_000 and 0 < logon["recentp95"] < 30_000
        echo, intended = rows["echo"], rows["echo_intended"]
        assert echo["run"] == intended["run"] > 0 and 0 < echo["runp50"] <= echo["runp95"]
        assert intended["runp95"] >= echo["runp95"]  # from the intended start is never shorter
        servers = {k: r for k, r in rows.items() if k.startswith("server:")}
        assert set(servers) >= {f"server:{s}" for s in load_profile(profile).server_ids}  # 0 ops show too
        assert sum(r["share"] for r in servers.values()) == pytest.approx(1.0, abs=0.002)
        assert sum(r["shareofeven"] for r in servers.values()) == pytest.approx(len(servers), abs=0.01)
        # What the engineer sees: Locust's page, rendered by a real browser, opened on the gateload tab.
        text = rendered_text(f"{base}/?tab=gateload", tmp_path / "chromium")
        cells = [line.strip() for line in text.splitlines() if line.strip()]
        assert "gateload" in cells, cells[:80]
        for _, title in webview.STRUCTURE[1:]:
            assert title in cells, (title, cells[:120])
        for _, label in webview.COUNT_ROWS:
            assert label in cells, (label, cells[:120])
        assert any(c.startswith("Logon time (") for c in cells) and any(
            c.startswith("Keystroke echo (") for c in cells
        )
        assert all(f"Server {s}" in cells for s in load_profile(profile).server_ids), cells
        started_cell = cells[cells.index(webview.COUNT_ROWS[0][1]) + 1]
        assert int(started_cell) > 0, cells  # the row carries the run's figures, not only its label
        assert post("/stop", {})["success"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
