"""The sample recorder and the run folder, in-process with Locust's real local runner.

The users here fire ``events.request`` with known values, so every row can be checked exactly; no
network is needed. Distributed runs (--processes, master + workers) are in test_locustfile_*.py.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pandas as pd
import pyarrow as pa
import pytest
from locust import User, constant, task
from locust.argument_parser import get_empty_argument_parser, setup_parser_arguments
from locust.env import Environment
from locust.event import Events
from locust.exception import StopUser

from gateload.analysis.schema import META_KEYS, SAMPLE_SCHEMA, part_files
from gateload.locustfiles.lib import options, runfolder, runinfo
from gateload.locustfiles.lib.recorder import HOT_COLUMNS, process_name, to_table
from gateload.targets.profile import load_profile

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "targets" / "profiles" / "reference-before.toml"


def parsed(*args: str) -> argparse.Namespace:
    parser = get_empty_argument_parser()
    setup_parser_arguments(parser)
    options.add_arguments(parser)
    return parser.parse_args(list(args))


def firing_user(limit: int | None, wait: float = 0.002) -> type[User]:
    """A user that fires known samples: every 4th fails (context error or a classified exception)."""

    class Firing(User):
        wait_time = constant(wait)
        fired = 0  # over all users of the class
        started = 0

        def on_start(self) -> None:
            self.count = 0
            type(self).started += 1
            self.user_id = type(self).started

        @task
        def fire(self) -> None:
            if limit is not None and self.count >= limit:
                raise StopUser()
            self.count += 1
            type(self).fired += 1
            k = type(self).fired
            exception, context = None, {"user_id": self.user_id, "server": f"s{k % 3}"}
            if k % 4 == 0:
                exception = RuntimeError("503")
                context["error"] = "http_503"
            elif k % 4 == 1:
                exception = ConnectionRefusedError()  # no error class given: the recorder classifies
            if k % 2:
                context["t_intended"] = time.time() - 0.5
            self.environment.events.request.fire(
                request_type="TEST",
                name="op",
                response_time=1.25,
                response_length=10,
                exception=exception,
                context=context,
                start_time=time.time() - 0.00125,
            )

    return Firing


@pytest.fixture
def run_env(tmp_path: Path) -> Iterator[Callable[..., tuple[Environment, Any]]]:
    made: list[Environment] = []

    def make(user: type[User], *args: str) -> tuple[Environment, Any]:
        ns = parsed("--results-dir", str(tmp_path), "--label", "t", *args)
        env = Environment(user_classes=[user], events=Events(), parsed_options=ns)
        env.create_local_runner()
        controller = runfolder.attach(env)
        made.append(env)
        return env, controller

    yield make
    for env in made:
        env.runner.quit()


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        gevent.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def meta_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "meta.json").read_text())


def finish_when_users_done(env: Environment) -> None:
    wait_until(lambda: env.runner.state == "running" and env.runner.user_count == 0, 60, "users to finish")
    env.runner.stop()


# --- exact counts and values --------------------------------------------------------------------------


def test_every_request_becomes_one_row_with_its_values(run_env) -> None:
    user = firing_user(limit=250)
    env, controller = run_env(user, "-u", "4")
    started = time.time()
    env.runner.start(4, spawn_rate=4)
    finish_when_users_done(env)

    run_dir = controller.last_run_dir
    df = pd.read_parquet(run_dir / "samples.parquet")
    meta = meta_of(run_dir)
    assert user.fired == 4 * 250
    assert len(df) == meta["sample_count"] == env.runner.stats.total.num_requests == 1000
    assert meta["locust"]["requests"] == 1000 and meta["locust"]["failures"] == 500
    assert meta["status"] == "completed" and meta["completed"] is True

    assert (df["duration_ms"] == 1.25).all()  # sub-millisecond, not rounded
    assert (df["bytes"] == 10).all() and set(df["type"]) == {"TEST"} and set(df["name"]) == {"op"}
    assert set(df["worker"]) == {process_name()}
    assert set(df["server"]) == {"s0", "s1", "s2"}
    assert df["user_id"].notna().all() and df["user_id"].nunique() == 4
    assert df["user_count"].between(1, 4).all()
    assert df["t_start"].between(started - 1, time.time()).all()
    assert df["success"].sum() == 500 and df["error"].isna().sum() == 500
    assert set(df.loc[~df["success"], "error"]) == {"http_503", "refused"}  # context first, then classify()
    assert df["t_intended"].notna().sum() == 500 and df["t_intended"].isna().sum() == 500
    assert ((df["t_start"] - df["t_intended"]).dropna() > 0.4).all()


def test_parts_are_readable_while_the_run_goes_on(run_env) -> None:
    env, controller = run_env(firing_user(limit=None, wait=0.01), "-u", "2")
    env.runner.start(2, spawn_rate=2)
    run_dir = wait_until(lambda: controller.last_run_dir, 10, "the run folder")
    meta = wait_until(lambda: (run_dir / "meta.json").exists() and meta_of(run_dir), 10, "meta.json")
    assert meta["status"] == "running" and meta["ended_at"] is None
    assert set(META_KEYS) <= set(meta)
    parts = wait_until(lambda: len(part_files(run_dir)) >= 2 and part_files(run_dir), 15, "two part files")
    assert env.runner.state in ("spawning", "running")
    early = pd.concat(pd.read_parquet(p) for p in parts)
    assert len(early) > 0 and list(early.columns) == SAMPLE_SCHEMA.names
    env.runner.stop()
    df = pd.read_parquet(run_dir / "samples.parquet")
    assert len(df) == meta_of(run_dir)["sample_count"] == env.runner.stats.total.num_requests > len(early)


def test_a_full_buffer_is_flushed_before_the_interval(run_env) -> None:
    env, controller = run_env(firing_user(limit=1))
    recorder = controller.recorder
    recorder.flush_interval, recorder.max_rows = 60.0, 100  # only the row count can trigger a write
    env.runner.start(1, spawn_rate=1)
    run_dir = wait_until(lambda: controller.last_run_dir, 10, "the run folder")
    for _ in range(100):
        recorder.on_request("TEST", "direct", 2.5, 1, context={"user_id": 1})
    parts = wait_until(lambda: part_files(run_dir), 5, "a part written on the row count")
    assert pd.read_parquet(parts[0])["name"].astype(str).eq("direct").sum() >= 99
    finish_when_users_done(env)
    assert meta_of(run_dir)["sample_count"] == env.runner.stats.total.num_requests + 100


def test_each_start_is_a_new_run_folder(run_env) -> None:
    user = firing_user(limit=20)
    env, _controller = run_env(user, "-u", "2")
    counts = []
    for _ in range(2):
        env.runner.start(2, spawn_rate=2)
        finish_when_users_done(env)
        counts.append(env.runner.stats.total.num_requests)
    runs = sorted((Path(env.parsed_options.results_dir) / "t").iterdir())
    assert len(runs) == 2 and runs[0].name != runs[1].name
    for run_dir, count in zip(runs, counts, strict=True):
        meta = meta_of(run_dir)
        assert meta["status"] == "completed" and meta["sample_count"] == count == 40
        assert len(pd.read_parquet(run_dir / "samples.parquet")) == 40


def test_a_fixed_run_id_is_suffixed_on_the_next_start(run_env) -> None:
    env, _controller = run_env(firing_user(limit=5), "-u", "1", "--run-id", "web")
    for _ in range(2):
        env.runner.start(1, spawn_rate=1)
        finish_when_users_done(env)
    names = sorted(p.name for p in (Path(env.parsed_options.results_dir) / "t").iterdir())
    assert names == ["web", "web-2"]


# --- meta.json ----------------------------------------------------------------------------------------


def test_meta_has_every_key_and_the_profile_without_secrets(run_env) -> None:
    env, controller = run_env(
        firing_user(limit=10),
        "-u",
        "2",
        "-r",
        "2",
        "--profile",
        str(PROFILE),
        "--host",
        "http://bob:pw-123@127.0.0.1:1",
    )
    env.runner.start(2, spawn_rate=2)
    finish_when_users_done(env)
    meta = meta_of(controller.last_run_dir)
    assert set(META_KEYS) <= set(meta)
    assert (
        meta["schema_version"] == 1
        and meta["run_id"] == controller.last_run_dir.name
        and meta["label"] == "t"
    )
    assert meta["started_at"] < meta["ended_at"]
    profile = load_profile(PROFILE)
    assert meta["profile"]["name"] == "reference-before"
    assert meta["profile"]["servers"] == ["old-01", "old-02", "old-03", "old-04"]
    assert meta["profile"]["sha256"] == runinfo.file_sha256(PROFILE)
    assert meta["profile"]["data"]["workload"]["think_max_s"] == profile.workload.think_max_s
    assert meta["think_time_s"] == pytest.approx(2.0)
    assert meta["paced"] == {"SSH keystroke": pytest.approx(1000 / 150)}
    assert meta["security"] == {"host_key_verified": True, "tls_verified": False, "tls": False}
    assert meta["shape"] == {"name": "none", "params": {"users": 2, "spawn_rate": 2.0, "run_time_s": None}}
    assert [(s["index"], s["users"], s["spawn_rate"]) for s in meta["steps"]] == [(0, 2, 2.0)]
    assert meta["steps"][0]["start"] == meta["started_at"] and meta["steps"][0]["end"] == meta["ended_at"]
    assert set(meta["versions"]) >= {"python", "locust", "asyncssh", "aiohttp", "gevent", "gateload"}
    assert meta["versions"]["locust"] and meta["processes"] == 1 and meta["host"]
    assert meta["git_revision"] is None or len(meta["git_revision"]) == 40
    assert meta["args"]["host"] == "http://127.0.0.1:1" and meta["args"]["profile"] == str(PROFILE)
    assert "pw-123" not in (controller.last_run_dir / "meta.json").read_text()
    assert meta["locust"]["cpu_warnings"] == 0


def test_step_schedule_is_recorded_as_it_happens(run_env) -> None:
    env, controller = run_env(
        firing_user(limit=None, wait=0.05),
        "--shape",
        "step",
        "--step-users",
        "1,3",
        "--step-hold",
        "1.5",
        "--step-ramp",
        "1",
    )
    assert env.shape_class is controller.shape
    env.runner.start_shape()
    shape_greenlet = env.runner.shape_greenlet
    shape_greenlet.join(timeout=30)
    assert shape_greenlet.dead, "the 5 s shape did not end within 30 s"
    meta = wait_until(
        lambda: meta_of(controller.last_run_dir)["status"] != "running" and meta_of(controller.last_run_dir),
        10,
        "the final meta.json",
    )
    assert meta["status"] == "completed"
    assert meta["shape"]["name"] == "step" and meta["shape"]["params"]["users"] == [1, 3]
    steps = meta["steps"]
    assert [(s["index"], s["users"], s["phase"]) for s in steps] == [(0, 1, "step-1"), (1, 3, "step-2")]
    assert steps[0]["spawn_rate"] == 1.0 and steps[1]["spawn_rate"] == 2.0
    assert steps[0]["end"] == steps[1]["start"] and steps[1]["end"] <= meta["ended_at"]
    for step in steps:  # ticks come about once a second, so a step lasts its 2.5 s within ~1 s
        assert step["end"] - step["start"] == pytest.approx(2.5, abs=1.2)
    df = pd.read_parquet(controller.last_run_dir / "samples.parquet")
    assert len(df) == meta["sample_count"] == env.runner.stats.total.num_requests
    late = df[df["t_start"] > steps[1]["spawned"]]
    assert (late["user_count"] == 3).all() and len(late) > 0


def test_shape_none_installs_no_shape_class(run_env) -> None:
    env, _controller = run_env(firing_user(limit=1), "-u", "3", "-r", "3", "-t", "5s")
    assert env.shape_class is None


# --- building and sanitizing --------------------------------------------------------------------------


def test_odd_values_do_not_cost_the_batch() -> None:
    cols = {
        "t_start": [1.0, 2.0],
        "t_intended": [math.nan, 1.5],
        "duration_ms": [0.25, 3],
        "type": ["SSH", "HTTP"],
        "name": ["keystroke", 7],
        "success": [True, False],
        "error": [None, "reset"],
        "bytes": [None, 5],
        "user_id": ["12", None],
        "user_count": [3, 3],
        "server": [None, "new-02"],
    }
    table = to_table(cols, "host:1")
    assert table.schema == SAMPLE_SCHEMA
    assert table.column("user_id").to_pylist() == [12, None]
    assert table.column("name").to_pylist() == ["keystroke", "7"]
    assert table.column("worker").to_pylist() == ["host:1", "host:1"]
    assert pa.compute.is_nan(table.column("t_intended")).to_pylist() == [True, False]


def test_sanitize_masks_secrets_and_url_credentials() -> None:
    ns = argparse.Namespace(
        host="https://alice:hunter2@portal:443/x",
        password="hunter2",
        totp_secret="JBSWY3DP",
        users=5,
        web_login=True,
        ticket_ttl_s=30.0,
        gateload_run={"id": "x"},
        tls_key="/keys/k.pem",
        token="t0k",
    )
    clean = runinfo.sanitize_args(ns, {"tls_key"})
    assert clean["host"] == "https://portal:443/x"
    assert clean["password"] == clean["totp_secret"] == clean["token"] == clean["tls_key"] == runinfo.MASK
    assert clean["users"] == 5 and clean["web_login"] is True and clean["ticket_ttl_s"] == 30.0
    assert "gateload_run" not in clean
    assert "hunter2" not in json.dumps(clean) and "JBSWY3DP" not in json.dumps(clean)


# --- interruptions inside the recorder ----------------------------------------------------------------


def test_a_row_cut_short_is_dropped_without_shifting_later_rows(run_env) -> None:
    env, controller = run_env(firing_user(limit=0))  # the user fires nothing itself
    recorder = controller.recorder
    env.runner.start(1, spawn_rate=1)
    wait_until(lambda: recorder.active, 10, "recording to start")
    recorder.on_request("SSH", "first", 1.0, 1, context={"user_id": 1, "server": "a"}, start_time=100.0)
    cols = recorder._cols  # Ctrl-C between two appends of the next row leaves a prefix one longer:
    cols.t_start.append(200.0)
    cols.t_intended.append(math.nan)
    cols.duration_ms.append(2.0)
    recorder.on_request("SSH", "third", 3.0, 3, context={"user_id": 3, "server": "c"}, start_time=300.0)
    taken = recorder._take()
    assert taken["t_start"] == [100.0, 300.0] and taken["name"] == ["first", "third"]
    assert taken["server"] == ["a", "c"] and taken["duration_ms"] == [1.0, 3.0]
    env.runner.stop()


def test_master_counts_a_resent_batch_once(tmp_path: Path) -> None:
    from locust.rpc import Message

    from gateload.locustfiles.lib.recorder import MSG_FINAL, MSG_SAMPLES, Recorder

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = Environment(events=Events(), parsed_options=parsed())
    env.create_master_runner("127.0.0.1", port)
    try:
        recorder = Recorder(env, final_wait_s=2.0)
        recorder.start("r", tmp_path, participants={"w1"})

        def batch(seq: int, n: int) -> Message:
            cols = {name: [None] * n for name in HOT_COLUMNS}
            cols.update(t_start=[float(seq)] * n, duration_ms=[1.0] * n, success=[True] * n, type=["T"] * n)
            cols.update(name=[f"b{seq}"] * n)
            return Message(MSG_SAMPLES, {"run": "r", "worker": "h:1", "seq": seq, "cols": cols}, "w1")

        recorder._on_samples(env, batch(0, 3))
        recorder._on_samples(env, batch(1, 2))
        recorder._on_samples(env, batch(1, 2))  # sent again after an interrupted send that got through
        recorder._on_final(
            env, Message(MSG_FINAL, {"run": "r", "worker": "h:1", "batches": 2, "rows": 5}, "w1")
        )
        result = recorder.finish()
    finally:
        env.runner.quit()
    assert result.complete and result.rows == 5 and result.workers["h:1"]["batches"] == 2
    df = pd.read_parquet(tmp_path / "samples.parquet")
    assert sorted(df["name"].astype(str)) == ["b0", "b0", "b0", "b1", "b1"] and set(df["worker"]) == {"h:1"}


def test_master_reports_a_worker_that_never_sent_its_count(tmp_path: Path) -> None:
    from gateload.locustfiles.lib.recorder import Recorder

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = Environment(events=Events(), parsed_options=parsed())
    env.create_master_runner("127.0.0.1", port)
    try:
        recorder = Recorder(env, final_wait_s=0.5)
        recorder.start("r", tmp_path, participants={"gone"})  # not connected: nothing to wait for
        started = time.monotonic()
        result = recorder.finish()
    finally:
        env.runner.quit()
    assert time.monotonic() - started < 5
    assert not result.complete and "no final count" in result.problems[0]


def test_cpu_warnings_during_the_run_are_counted(run_env) -> None:
    env, controller = run_env(firing_user(limit=5), "-u", "1")
    env.events.cpu_warning.fire(environment=env, cpu_usage=99.0)  # before the run: not counted
    env.runner.start(1, spawn_rate=1)
    wait_until(lambda: controller.recorder.active, 10, "recording to start")
    for _ in range(2):  # what Locust's CPU monitor fires every 10 s while usage is above 90 %
        env.events.cpu_warning.fire(environment=env, cpu_usage=97.5)
    finish_when_users_done(env)
    assert meta_of(controller.last_run_dir)["locust"]["cpu_warnings"] == 2
