"""``locust -f locustfiles/homeoffice.py`` as people run it: headless, --processes, master + workers, signals.

Test users (in a small extra locustfile given with ``-f homeoffice.py,<extra>`` and selected by name)
fire samples with known values without any network, so runs are short and counts exact.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from gateload.analysis.metrics import analyze_run
from gateload.analysis.runs import load_run
from gateload.analysis.schema import META_KEYS, part_files

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "homeoffice.py"

TEST_USERS = '''
import time

import gevent
from locust import User, constant, task

from gateload.locustfiles.lib.arrivals import next_arrival


class FiringUser(User):
    """About 100 known samples a second, no failures."""

    wait_time = constant(0.01)

    @task
    def fire(self):
        self.environment.events.request.fire(
            request_type="TEST", name="op", response_time=1.25, response_length=10, exception=None,
            context={"user_id": 1, "server": "s1"}, start_time=time.time(),
        )


class BusyUser(User):
    """Keeps the CPU 20 ms a task, so a Ctrl-C finds its greenlet running, not the main one."""

    wait_time = constant(0)

    @task
    def fire(self):
        t = time.monotonic()
        while time.monotonic() - t < 0.02:
            pass
        self.environment.events.request.fire(
            request_type="TEST", name="op", response_time=20.0, response_length=0, exception=None,
            context={"user_id": 1, "server": "s1"}, start_time=time.time(),
        )


class ProfileEchoUser(User):
    """Records which target profile its process was given, as the sample's server."""

    wait_time = constant(0.01)

    @task
    def fire(self):
        profile = getattr(self.environment.parsed_options, "profile", None) or "none"
        self.environment.events.request.fire(
            request_type="TEST", name="op", response_time=1.0, response_length=0, exception=None,
            context={"user_id": 1, "server": profile.rsplit("/", 1)[-1]}, start_time=time.time(),
        )


class PacedUser(User):
    """One session per arrival (logon-storm mode): sleeps until its arrival, records it as t_intended."""

    wait_time = constant(0)

    @task
    def session(self):
        t = next_arrival(self.environment)
        if t is not None:
            gevent.sleep(max(0.0, t - time.time()))
        self.environment.events.request.fire(
            request_type="SESSION", name="session", response_time=0.5, response_length=0, exception=None,
            context={"user_id": 1, "t_intended": t}, start_time=time.time(),
        )
        gevent.sleep(0.05)
'''


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateload_test_users.py"
    path.write_text(TEST_USERS)
    return path


def locust_cmd(users_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", f"{LOCUSTFILE},{users_file}", *args]


def run_locust(users_file: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        locust_cmd(users_file, *args), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def start_locust(users_file: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            locust_cmd(users_file, *args),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes(n: int) -> list[str]:
    """--processes N with the master on loopback and a free port (never Locust's shared default 5557)."""
    port = str(free_port())
    return [
        "--processes",
        str(n),
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        port,
        "--master-port",
        port,
    ]


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def only_run(results: Path, label: str) -> Path:
    runs = list((results / label).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def meta_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "meta.json").read_text())


def assert_counts_match(run_dir: Path, exact: bool = True) -> tuple[dict[str, Any], pd.DataFrame]:
    """Samples on disk == meta sample_count == Locust's own request count (meta and its CSV).

    ``exact=False`` (Ctrl-C to every process): KeyboardInterrupt lands in whichever greenlet runs, so
    Locust may lose a worker's in-flight stats report, or count a request whose sample was cut short
    (one per process at most); the samples on disk must still match what the recorder counted.
    """
    meta = meta_of(run_dir)
    df = pd.read_parquet(run_dir / "samples.parquet")
    stats = pd.read_csv(run_dir / "locust_stats.csv")
    locust_total = int(stats.loc[stats["Name"] == "Aggregated", "Request Count"].iloc[0])
    assert len(df) == meta["sample_count"] > 0 and meta["locust"]["requests"] == locust_total
    if exact:
        assert len(df) == locust_total
    else:
        assert locust_total <= len(df) + meta["processes"] + 1
    assert meta["recorder"]["complete"] and meta["recorder"]["problems"] == []
    return meta, df


# --- headless runs ------------------------------------------------------------------------------------


def test_headless_run_writes_a_complete_folder(users_file: Path, tmp_path: Path) -> None:
    out = run_locust(
        users_file,
        "--headless",
        "-u",
        "3",
        "-r",
        "3",
        "-t",
        "3s",
        "--results-dir",
        str(tmp_path),
        "--label",
        "before",
        "--run-id",
        "r1",
        "FiringUser",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = tmp_path / "before" / "r1"
    for name in (
        "meta.json",
        "locust_stats.csv",
        "locust_stats_history.csv",
        "locust_failures.csv",
        "locust_exceptions.csv",
        "locust_report.html",
    ):
        assert (run_dir / name).is_file(), name
    assert part_files(run_dir)
    meta, df = assert_counts_match(run_dir)
    assert set(META_KEYS) <= set(meta)
    assert meta["status"] == "completed" and meta["run_id"] == "r1" and meta["label"] == "before"
    assert meta["ended_at"] - meta["started_at"] == pytest.approx(3.0, abs=1.0)
    assert (df["duration_ms"] == 1.25).all() and df["user_count"].between(1, 3).all()
    assert "[gateload] run before/r1 started" in out.stdout
    assert "[gateload] run before/r1 completed" in out.stdout


@pytest.mark.load
def test_processes_2_records_every_sample_once(users_file: Path, tmp_path: Path) -> None:
    out = run_locust(
        users_file,
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "4s",
        *processes(2),
        "--results-dir",
        str(tmp_path),
        "--label",
        "p",
        "FiringUser",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    meta, df = assert_counts_match(only_run(tmp_path, "p"))
    assert meta["status"] == "completed" and meta["processes"] == 2 and meta["arrivals"] is None
    assert df["worker"].nunique() == 2  # samples from both children, none lost or doubled
    assert set(meta["recorder"]["workers"]) == set(df["worker"].astype(str))
    per_worker = df["worker"].astype(str).value_counts().to_dict()
    assert per_worker == {w: v["rows"] for w, v in meta["recorder"]["workers"].items()}
    steady = df[df["t_start"] > df["t_start"].min() + 1.5]
    assert (steady["user_count"] == 4).all()  # the whole test's users, not one process's


@pytest.mark.load
def test_master_and_two_workers_on_loopback(users_file: Path, tmp_path: Path) -> None:
    port = free_port()
    master_only = ["--profile", "targets/profiles/reference-before.toml"]  # the workers get none
    worker_args = ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port), "ProfileEchoUser"]
    workers = [start_locust(users_file, *worker_args, log=tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        out = run_locust(
            users_file,
            *["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)],
            *["--expect-workers", "2", "--headless", "-u", "4", "-r", "4", "-t", "4s", *master_only],
            *["--results-dir", str(tmp_path), "--label", "dist", "ProfileEchoUser"],
        )
        assert out.returncode == 0, out.stderr[-2000:]
        for w in workers:
            w.wait(timeout=30)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    meta, df = assert_counts_match(only_run(tmp_path, "dist"))
    assert meta["status"] == "completed" and meta["processes"] == 2
    assert df["worker"].nunique() == 2
    assert set(df["server"].astype(str)) == {"reference-before.toml"}  # the master's --profile reached them


@pytest.mark.load
def test_arrivals_split_one_grid_across_processes(users_file: Path, tmp_path: Path) -> None:
    out = run_locust(
        users_file,
        "--headless",
        "--shape",
        "arrivals",
        "--arrival-rate",
        "20",
        "-u",
        "10",
        "-r",
        "10",
        "-t",
        "4s",
        *processes(2),
        "--results-dir",
        str(tmp_path),
        "--label",
        "storm",
        "PacedUser",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    meta, df = assert_counts_match(only_run(tmp_path, "storm"))
    assert meta["paced"] == {"SESSION session": 2.0} and meta["shape"]["name"] == "arrivals"  # 20/s, 10 users
    arrived = meta["arrivals"]
    assert arrived["rate"] == 20.0 and arrived["planned"] >= 60  # -t 4s at 20/s (longer on a busy machine)
    # planned counts the grid up to the last worker's stop, which the master's stop message precedes
    assert meta["ended_at"] <= arrived["until"] < meta["ended_at"] + 5
    assert arrived["planned"] == int((arrived["until"] - meta["started_at"]) * 20) + 1
    assert len(df) <= arrived["claimed"] <= arrived["planned"]  # claimed but killed while waiting: no row
    # the pool of 10 suffices; a starved machine starts users late and misses a few early arrivals
    assert arrived["claimed"] >= 0.7 * arrived["planned"]
    assert meta["status"] == "completed"
    t = df["t_intended"].sort_values().to_numpy()
    assert len(t) >= 40 and len(set(t)) == len(t)  # ~80 planned; no arrival handed out twice
    gaps = (t[1:] - t[:-1]) * 20  # in units of the planned interarrival time
    assert (abs(gaps - gaps.round()) < 1e-3).all()  # all on one global 1/20 s grid
    assert (gaps.round() == 1).mean() > 0.9  # and (nearly) every slot of it used
    for _worker, own in df.groupby("worker", observed=True)["t_intended"]:
        own_gaps = own.sort_values().diff().dropna() * 20
        assert (own_gaps.round() >= 2).all()  # each process takes every other arrival
    assert (df["t_start"] - df["t_intended"]).min() > -0.05  # nobody starts before its arrival


# --- interruptions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "n_processes", "user"),
    [
        (signal.SIGTERM, None, "FiringUser"),
        (signal.SIGINT, "2", "FiringUser"),
        (signal.SIGINT, None, "BusyUser"),
    ],
)
def test_interrupted_run_keeps_its_samples(
    users_file: Path, tmp_path: Path, sig: int, n_processes: str, user: str
) -> None:
    # BusyUser: Ctrl-C arrives while a user's greenlet runs; it must stop the run, not that user
    # with a traceback (interrupt.py)
    extra = processes(int(n_processes)) if n_processes else []
    proc = start_locust(
        users_file,
        "--headless",
        "-u",
        "3",
        "-r",
        "3",
        "-t",
        "60s",
        *extra,
        "--results-dir",
        str(tmp_path),
        "--label",
        "int",
        user,
        log=tmp_path / "locust.log",
    )
    try:
        run_dir = wait_until(
            lambda: (tmp_path / "int").is_dir() and only_run(tmp_path, "int"), 30, "run folder"
        )
        parts = wait_until(lambda: len(part_files(run_dir)) >= 2 and part_files(run_dir), 30, "two parts")
        while_running = pd.concat(pd.read_parquet(p) for p in parts)
        assert len(while_running) > 0 and meta_of(run_dir)["status"] == "running"
        os.killpg(proc.pid, sig)  # as Ctrl-C / a service manager would: the whole process group
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = (tmp_path / "locust.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    meta, df = assert_counts_match(run_dir, exact=sig == signal.SIGTERM)
    assert meta["status"] == "interrupted" and meta["completed"] is False
    assert meta["ended_at"] - meta["started_at"] < 50 and len(df) >= len(while_running)


@pytest.mark.load
def test_a_stopped_generator_is_recorded_as_a_pause(users_file: Path, tmp_path: Path) -> None:
    """The whole generator (master and two workers) stopped for 3 s, as a paused VM stops it: every
    process records the pause in meta.json, and the analysis names it (clockwatch.py)."""
    users = ["-u", "4", "-r", "4", "-t", "12s"]
    args = ["--headless", *users, *processes(2), "--label", "stop", "FiringUser"]
    proc = start_locust(users_file, *args, "--results-dir", str(tmp_path), log=tmp_path / "locust.log")
    try:
        run_dir = wait_until(
            lambda: (tmp_path / "stop").is_dir() and only_run(tmp_path, "stop"), 30, "run folder"
        )
        wait_until(lambda: part_files(run_dir), 30, "samples")
        os.killpg(proc.pid, signal.SIGSTOP)
        time.sleep(3.0)  # the stimulus: how long the generator stands still
        os.killpg(proc.pid, signal.SIGCONT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    meta, _df = assert_counts_match(run_dir)
    assert meta["status"] == "completed", (tmp_path / "locust.log").read_text()[-3000:]
    pauses = meta["generator_pauses"]
    assert len({p["process"] for p in pauses}) == len(pauses) == 3, pauses  # master and both workers
    for p in pauses:  # a stopped process: both clocks moved on, and by the same
        assert 2.5 <= p["monotonic_s"] <= 6 and abs(p["wall_s"] - p["monotonic_s"]) < 0.5, pauses
    run = load_run(run_dir)
    warnings = analyze_run(run).warnings
    named = [w for w in warnings if "ran nothing for" in w and "it was not scheduled" in w]
    assert len(named) == 3, warnings


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--shape", "step", "--step-users", "10,abc"], "--step-users is '10,abc'"),
        (["--shape", "arrivals"], "--arrival-rate"),
        (["--profile", "nowhere/missing.toml"], "profile not found"),
        (["--label", "../escape"], "--label"),
        (["--shape", "sawtooth"], "invalid choice: 'sawtooth'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    users_file: Path, tmp_path: Path, args: list[str], expected: str
) -> None:
    out = run_locust(
        users_file,
        "--headless",
        "-u",
        "1",
        "-t",
        "2s",
        "--results-dir",
        str(tmp_path / "res"),
        *args,
        "FiringUser",
        timeout=60,
    )
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and expected in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").rglob("meta.json"))


def test_an_existing_run_is_never_overwritten(users_file: Path, tmp_path: Path) -> None:
    kept = tmp_path / "before" / "r1" / "meta.json"
    kept.parent.mkdir(parents=True)
    kept.write_text('{"status": "completed"}')
    out = run_locust(
        users_file,
        "--headless",
        "-u",
        "1",
        "-t",
        "2s",
        "--results-dir",
        str(tmp_path),
        "--label",
        "before",
        "--run-id",
        "r1",
        "FiringUser",
        timeout=60,
    )
    assert out.returncode == 2 and "already holds a run" in out.stderr and "Traceback" not in out.stderr
    assert kept.read_text() == '{"status": "completed"}'
    assert list(kept.parent.iterdir()) == [kept]


# --- shapes -------------------------------------------------------------------------------------------


@pytest.mark.load
def test_shape_none_is_a_plain_locust_run(users_file: Path, tmp_path: Path) -> None:
    common = ["--headless", "-u", "2", "-r", "2", "-t", "2s", "--results-dir", str(tmp_path), "FiringUser"]
    plain = run_locust(users_file, *common, "--label", "plain")
    none = run_locust(users_file, *common, "--label", "none", "--shape", "none")
    for out in (plain, none):
        assert out.returncode == 0, out.stderr[-2000:]
        log = out.stderr
        assert (
            "Ramping to 2 users at a rate of 2.00 per second" in log
            and "Run time limit set to 2 seconds" in log
        )
        assert "Shape" not in log and "--run-time limit reached" in log
    for label in ("plain", "none"):
        meta, _df = assert_counts_match(only_run(tmp_path, label))
        assert meta["shape"]["name"] == "none" and meta["status"] == "completed"
        assert [(s["users"], s["spawn_rate"]) for s in meta["steps"]] == [(2, 2.0)]


@pytest.mark.load
def test_step_shape_headless_with_two_processes(users_file: Path, tmp_path: Path) -> None:
    out = run_locust(
        users_file,
        "--headless",
        "--shape",
        "step",
        "--step-users",
        "2,4",
        "--step-hold",
        "1.5",
        "--step-ramp",
        "1",
        *processes(2),
        "--results-dir",
        str(tmp_path),
        "--label",
        "s",
        "FiringUser",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        "[gateload] step 1/2 step-1: 2 users" in out.stdout
        and "[gateload] step 2/2 step-2: 4 users" in out.stdout
    )
    meta, df = assert_counts_match(only_run(tmp_path, "s"))
    assert meta["status"] == "completed" and meta["shape"]["params"]["users"] == [2, 4]
    steps = meta["steps"]
    assert [s["users"] for s in steps] == [2, 4] and steps[0]["end"] == steps[1]["start"]
    assert steps[0]["start"] >= meta["started_at"] - 1.5 and steps[1]["end"] <= meta["ended_at"]
    second = df[df["t_start"] > steps[1]["start"] + 1.5]
    assert len(second) > 0 and (second["user_count"] == 4).all()


# --- web UI -------------------------------------------------------------------------------------------


def test_web_ui_shows_the_users_and_each_start_is_a_new_run(users_file: Path, tmp_path: Path) -> None:
    import urllib.parse
    import urllib.request

    port = free_port()
    proc = start_locust(
        users_file,
        "--web-host",
        "127.0.0.1",
        "--web-port",
        str(port),
        "--results-dir",
        str(tmp_path),
        "--label",
        "web",
        "FiringUser",
        log=tmp_path / "web.log",
    )
    base = f"http://127.0.0.1:{port}"

    def post(path: str, form: dict[str, str]) -> dict[str, Any]:
        data = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(urllib.request.Request(base + path, data=data), timeout=10) as resp:
            return json.loads(resp.read())

    def web_runs() -> list[Path]:
        return list((tmp_path / "web").iterdir()) if (tmp_path / "web").is_dir() else []

    def index() -> str:
        try:
            with urllib.request.urlopen(base + "/", timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    try:
        page = wait_until(index, 30, "the web UI")
        for name in (
            "HomeofficeUser",
            "PortalUser",
            "GatewayUser",
            "FiringUser",
            "step_users",
            "arrival_rate",
        ):
            assert name in page, name
        bad = post("/swarm", {"user_count": "2", "spawn_rate": "2", "shape": "step", "step_users": "1,x"})
        assert bad["success"] is False and "--step-users" in bad["message"]
        assert not (tmp_path / "web").exists()
        form = {"user_count": "2", "spawn_rate": "2", "shape": "none"}
        for n in (1, 2):
            started = post("/swarm", form)
            assert started["success"] is True, started
            wait_until(
                lambda n=n: sum(bool(part_files(d)) for d in web_runs()) == n, 20, "samples of run {n}"
            )
            assert post("/stop", {})["success"] is True
            wait_until(
                lambda: all(meta_of(d)["status"] != "running" for d in web_runs()), 20, "the run to end"
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    runs = sorted((tmp_path / "web").iterdir())
    assert len(runs) == 2
    for run_dir in runs:
        meta, _df = assert_counts_match(run_dir)
        assert meta["status"] == "completed"


# --- the real users against the reference farm --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.load
def test_target_command_against_the_reference_farm(
    reference_farm: Callable[..., Path], tmp_path: Path
) -> None:
    from gateload.targets.profile import load_profile

    profile_path = reference_farm("reference-before")
    profile = load_profile(profile_path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            "10",
            "-r",
            "5",
            "-t",
            "10s",
            "--profile",
            str(profile_path),
            "--results-dir",
            str(tmp_path / "smoke"),
            "--label",
            "before",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode in (0, 1), out.stderr[-3000:]  # 1: some operations failed, which Locust reports
    run_dir = only_run(tmp_path / "smoke", "before")
    meta, df = assert_counts_match(run_dir)
    assert meta["status"] == "completed" and (run_dir / "locust_report.html").is_file()
    assert meta["profile"]["path"] == str(profile_path) and meta["profile"]["servers"] == profile.server_ids
    assert meta["security"]["host_key_verified"] is True
    assert {"HTTP", "SSH"} <= set(df["type"].astype(str))
    assert set(df["server"].dropna().astype(str)) <= set(profile.server_ids) and df["server"].notna().any()
    # No account password may reach the results folder (samples, meta.json, CSV, HTML).
    secrets = [row.split(",")[1] for row in profile.credentials_path.read_text().splitlines()[1:] if row]
    assert secrets
    for path in run_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            leaked = [s for s in secrets if s.encode() in blob]
            assert not leaked, f"{path.name} holds a password"
