"""Benchmark 2, SSH efficiency: GatewayUser keystroke-echo ops/s against a pure asyncio asyncssh loop.

Both sides type into PTY shells of the same echo server (a separate process, ~0 service time: every
byte is echoed as soon as it arrives), at the same concurrency, one process each:

- **gateload**: ``locust -f locustfiles/homeoffice.py GatewayUser`` (the real user class, bridge and
  recorder; the workload mix is typing only, unpaced, long bursts). Keystrokes are counted from the raw
  samples the recorder wrote.
- **baseline**: a pure asyncio asyncssh client (no Locust, no gevent) looping keystroke -> echo on the
  same number of shells, timing each keystroke like the loop thread does.

Keystrokes are counted in the same window on both sides (from all shells ready + warm-up to the end
minus a tail), so connection set-up is left out. Figures: ops/s of each, their ratio (target >= 0.8),
and the CPU each client and the server used per keystroke in the window: if the server is at 100 % of
a core, both sides measure the server and the ratio says little (the CPU per keystroke still does).

This module is also the SSH toolbox of the other benchmarks (``bench_timing``, ``bench_scale``):

- ``python bench/bench_ssh.py serve --dir D --listen NAME:DELAY_MS[,...]``: the echo server (one
  listener per name, each echoing after its own injected delay), see :class:`EchoServer`;
- :func:`write_profile`: a ``kind = "real"`` profile + credentials for that server;
- :class:`CpuSampler`: CPU seconds and RSS of processes over time.

    .venv/bin/python bench/bench_ssh.py            # full (five rounds, about five minutes)
    .venv/bin/python bench/bench_ssh.py --smoke    # a few seconds, nothing appended to RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = b"gw$ "
BANNER_PREFIX = "gateload-server: "
USERNAME, PASSWORD = "bench", "bench-password"
READY = "ECHO-SERVER READY"
STATUS = "ECHO-SERVER STATUS"
ENCRYPTION_ALGS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
LOCUST = str(Path(sys.executable).with_name("locust"))


def raise_nofile() -> int:
    """Raise this process's open-files soft limit to the hard limit; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def report(bench: str, result: dict[str, Any], *, smoke: bool) -> int:
    """Print the figures and append them to bench/RESULTS.md with ``_report.record``.

    Smoke runs print the same way but record into a temporary file, so CI never dirties the repo.
    Exit code: 0, or 1 when a full run missed its target (as ``bench_analysis.py``); a result whose
    ``target_met`` is None has no target.
    """
    from _report import record

    met = result["target_met"]  # None: a measured capacity with no target (bench_density)
    verdict = "no target (a measured capacity)" if met is None else "target met" if met else "TARGET MISSED"
    notes = f"{result['notes']} {verdict}."
    if smoke:
        with tempfile.TemporaryDirectory(prefix="gateload-bench-smoke-") as tmp:
            record(bench, result["figures"], notes, results=Path(tmp) / "RESULTS.md")
        print("  (smoke run: not appended to bench/RESULTS.md)")
    else:
        record(bench, result["figures"], notes)
    sys.stdout.flush()
    return 0 if met is not False or smoke else 1


# --- the echo server (runs in its own process) -------------------------------------------------------


@dataclass
class ServerStats:
    """What the echo server did: per listener, echoes and how late its injected delays fired."""

    echoes: dict[str, int] = field(default_factory=dict)
    lateness_ms: dict[str, list[float]] = field(default_factory=dict)
    sessions: int = 0  # shells open now
    peak_sessions: int = 0
    connections: int = 0


class EchoServer:
    """asyncssh server: password auth (any user, one password), a raw PTY shell that echoes every byte.

    Per listener an injected delay: each received chunk is echoed after it (:class:`DelayLine`, a real
    thread that sleeps until each echo is due: asyncio's own timers fire up to 1 ms late, because epoll
    rounds its timeout up to whole milliseconds); 0 echoes at once. How late each delayed echo was
    actually written is recorded (``lateness_ms``). ``\\r`` answers ``\\r\\n`` + the prompt (after
    the same delay); exec channels answer ``ok``. The auth banner names the listener
    (``gateload-server: NAME``), so clients learn the backend without an extra round trip. Minimal
    per-session state, for the scale benchmark.
    """

    def __init__(self, state_dir: Path, listeners: dict[str, float], backlog: int = 4096) -> None:
        self.state_dir = state_dir
        self.listeners = listeners
        self.backlog = backlog
        self.stats = ServerStats()
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        import asyncio

        import asyncssh

        key_path = self.state_dir / "ssh_host_key"
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(key_path)
        key.write_public_key(self.state_dir / "ssh_host_key.pub")
        connection_class, _ = _server_classes()
        self.delay_line = DelayLine(asyncio.get_running_loop())
        self._acceptors = []
        for name, delay_ms in self.listeners.items():
            self.stats.echoes[name] = 0
            self.stats.lateness_ms[name] = []
            acceptor = await asyncssh.create_server(
                lambda name=name, delay=delay_ms / 1000.0: connection_class(self, name, delay),
                "127.0.0.1",
                0,
                server_host_keys=[key],
                encryption_algs=list(ENCRYPTION_ALGS),
                encoding=None,
                line_editor=False,
                allow_scp=False,
                agent_forwarding=False,
                x11_forwarding=False,
                reuse_address=True,
                backlog=self.backlog,
                login_timeout=120,
            )
            self._acceptors.append(acceptor)
            self.ports[name] = acceptor.get_port()


class DelayLine:
    """Hands callbacks to an asyncio loop when they are due, to within a thread wake-up (~0.1 ms).

    One real thread sleeps (a condition variable with a timeout, microsecond precision) until the
    earliest entry is due, then passes it to the loop with ``call_soon_threadsafe``; the callback gets
    its due time (perf_counter seconds) as last argument.
    """

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, Any, tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="delay-line", daemon=True).start()

    def call_at(self, due: float, fn: Any, *args: Any) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), fn, args))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._heap:
                    self._cond.wait()
                    continue
                due = self._heap[0][0]
                wait = due - time.perf_counter()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                _, _, fn, args = heapq.heappop(self._heap)
            self.loop.call_soon_threadsafe(fn, *args, due)


def _server_classes() -> tuple[type, type]:
    """The asyncssh server and session classes (built on first use: asyncssh is imported lazily)."""
    import asyncssh

    class EchoConnection(asyncssh.SSHServer):  # type: ignore[misc]
        def __init__(self, server: EchoServer, name: str, delay: float) -> None:
            self.server, self.name, self.delay = server, name, delay
            self.conn: Any = None

        def connection_made(self, conn: Any) -> None:
            self.conn = conn
            self.server.stats.connections += 1

        def connection_lost(self, exc: Exception | None) -> None:
            self.server.stats.connections -= 1
            self.conn = None

        def begin_auth(self, username: str) -> bool:
            self.conn.send_auth_banner(f"{BANNER_PREFIX}{self.name}\n")
            return True

        def password_auth_supported(self) -> bool:
            return True

        def validate_password(self, username: str, password: str) -> bool:
            return password == PASSWORD

        def session_requested(self) -> Any:
            return EchoSession(self)

    class EchoSession(asyncssh.SSHServerSession):  # type: ignore[misc]
        def __init__(self, conn: EchoConnection) -> None:
            self.conn = conn
            self.chan: Any = None
            self.shell = False

        def connection_made(self, chan: Any) -> None:
            self.chan = chan

        def pty_requested(self, *_args: Any) -> bool:
            return True

        def shell_requested(self) -> bool:
            self.shell = True
            return True

        def exec_requested(self, command: str) -> bool:
            return True

        def session_started(self) -> None:
            if self.shell:
                stats = self.conn.server.stats
                stats.sessions += 1
                stats.peak_sessions = max(stats.peak_sessions, stats.sessions)
                self.chan.write(PROMPT)
            else:
                self.chan.write(b"ok\n")
                self.chan.exit(0)

        def data_received(self, data: bytes, datatype: Any) -> None:
            delay = self.conn.delay
            if delay > 0:
                self.conn.server.delay_line.call_at(time.perf_counter() + delay, self._echo, data)
            else:
                self._echo(data, None)

        def _echo(self, data: bytes, due: float | None) -> None:
            conn = self.conn
            stats = conn.server.stats
            if due is not None:
                stats.lateness_ms[conn.name].append((time.perf_counter() - due) * 1000.0)
            stats.echoes[conn.name] += 1
            if b"\r" in data:
                data = data.replace(b"\r", b"\r\n" + PROMPT)
            with contextlib.suppress(Exception):  # the channel may be closing
                self.chan.write(data)

        def eof_received(self) -> bool:
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            if self.shell:
                self.conn.server.stats.sessions -= 1

    return EchoConnection, EchoSession


def _percentiles(values: Sequence[float], qs: Sequence[float] = (50, 99)) -> dict[str, float]:
    if not values:
        return {f"p{q:g}": float("nan") for q in qs}
    ordered = sorted(values)
    return {f"p{q:g}": ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] for q in qs}


def serve_main(args: argparse.Namespace) -> int:
    """``serve``: run the echo server until SIGTERM; stats as JSON in ``<dir>/server-stats.json``."""
    import asyncio

    raise_nofile()
    if args.nice:  # before any thread starts: Linux threads inherit it
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    listeners = {}
    for spec in args.listen.split(","):
        name, _, delay = spec.partition(":")
        listeners[name] = float(delay or 0)
    state = Path(args.dir)
    state.mkdir(parents=True, exist_ok=True)
    server = EchoServer(state, listeners)

    async def main() -> None:
        await server.start()
        ports = " ".join(f"{n}={p}" for n, p in server.ports.items())
        print(f"{READY} {ports}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.status_s)
            s = server.stats
            print(f"{STATUS} sessions={s.sessions} connections={s.connections} peak={s.peak_sessions}",
                  flush=True)  # fmt: skip

    asyncio.run(main())
    s = server.stats
    out = {
        "echoes": s.echoes,
        "peak_sessions": s.peak_sessions,
        "lateness_ms": {n: {**_percentiles(v), "n": len(v)} for n, v in s.lateness_ms.items()},
    }
    (state / "server-stats.json").write_text(json.dumps(out))
    return 0


class EchoServerProcess:
    """The echo server as a child process: ``ports``, ``host_key_pub``, live ``sessions``, ``stats()``."""

    def __init__(
        self, listeners: dict[str, float], status_s: float = 1.0, timeout_s: float = 30.0, nice: int = 0
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gateload-bench-echo-"))
        spec = ",".join(f"{n}:{d:g}" for n, d in listeners.items())
        self.cmd = [sys.executable, __file__, "serve", "--dir", str(self.dir), "--listen", spec,
                    "--status-s", str(status_s), "--nice", str(nice)]  # fmt: skip
        self.timeout_s = timeout_s
        self.ports: dict[str, int] = {}
        self.sessions = 0
        self.connections = 0
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def host_key_pub(self) -> Path:
        return self.dir / "ssh_host_key.pub"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> EchoServerProcess:
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=open(self.dir / "stderr.txt", "w"), text=True
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith(READY):
                    self.ports = {k: int(v) for k, v in re.findall(r"(\w[\w-]*)=(\d+)", line)}
                    ready.set()
                elif line.startswith(STATUS):
                    found = dict(re.findall(r"(\w+)=(\d+)", line))
                    self.sessions = int(found.get("sessions", 0))
                    self.connections = int(found.get("connections", 0))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(self.timeout_s):
            self.stop()
            raise RuntimeError(f"echo server did not start: {(self.dir / 'stderr.txt').read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stats(self) -> dict[str, Any]:
        """The server's final stats (after stop)."""
        path = self.dir / "server-stats.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def __exit__(self, *_exc: Any) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)  # its host key and stats: read by now


def write_profile(
    folder: Path,
    port: int,
    host_key_pub: Path,
    *,
    portal_url: str = "http://127.0.0.1:9",
    workload: dict[str, Any] | None = None,
    keepalive_s: float = 15.0,
    name: str = "bench-echo",
    accounts: int = 10_000,
) -> Path:
    """A ``kind = "real"`` profile (and credentials) for the echo server; the host key is pinned.

    ``accounts`` accounts, because every running user holds its own (the server takes any name). The
    echo server's shell has a fixed prompt and knows no commands, so the profile names it.
    """
    import tomli_w

    folder.mkdir(parents=True, exist_ok=True)
    creds = folder / f"{name}-credentials.csv"
    rows = "".join(f"{USERNAME}-{i:05d},{PASSWORD}\n" for i in range(1, accounts + 1))
    creds.write_text("username,password\n" + rows)
    creds.chmod(0o600)
    data = {
        "target": {"name": name, "kind": "real", "description": "gateload bench target"},
        "portal": {"url": portal_url},
        "gateway": {"host": "127.0.0.1", "port": port, "host_key": str(host_key_pub),
                    "keepalive_s": keepalive_s, "prompt": PROMPT.decode()},
        "credentials": {"file": str(creds)},
        "workload": workload or {},
    }  # fmt: skip
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(data))
    return path


# --- measuring processes ----------------------------------------------------------------------------


class CpuSampler:
    """Samples CPU seconds (user + system) and RSS of some processes every ``step_s``, in a thread.

    ``watch(pid, tree=True)`` adds the CPU of the process's children (``--processes``), alive or reaped;
    ``watch(pid, threads=True)`` also keeps each thread's CPU (``threads_between``).
    ``cpu_between(pid, t0, t1)`` interpolates the CPU seconds used in a wall-clock window.
    """

    def __init__(self, step_s: float = 0.25) -> None:
        import psutil

        self._psutil = psutil
        self.step_s = step_s
        self.series: dict[int, list[tuple[float, float, int]]] = {}
        self.thread_series: dict[int, list[tuple[float, dict[int, float]]]] = {}
        self._procs: dict[int, tuple[Any, bool]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, pid: int, tree: bool = False, threads: bool = False) -> None:
        with contextlib.suppress(self._psutil.Error), self._lock:
            self._procs[pid] = (self._psutil.Process(pid), tree)
            self.series.setdefault(pid, [])
            if threads:
                self.thread_series.setdefault(pid, [])
            self._sample_one(pid)

    def _sample_one(self, pid: int) -> None:
        proc, tree = self._procs[pid]
        try:
            with proc.oneshot():
                cpu = proc.cpu_times()
                total = cpu.user + cpu.system
                rss = proc.memory_info().rss
                children = proc.children(recursive=True) if tree else []
                per_thread = proc.threads() if pid in self.thread_series else []
            if tree:
                total += cpu.children_user + cpu.children_system
            for child in children:
                with contextlib.suppress(self._psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
                    rss += child.memory_info().rss
        except self._psutil.Error:
            self._procs.pop(pid, None)
            return
        now = time.time()
        self.series[pid].append((now, total, rss))
        if per_thread:
            self.thread_series[pid].append((now, {t.id: t.user_time + t.system_time for t in per_thread}))

    def _run(self) -> None:
        while not self._stop.wait(self.step_s):
            with self._lock:
                for pid in list(self._procs):
                    self._sample_one(pid)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._stop.set()
        self._thread.join(2)

    def cpu_between(self, pid: int, t0: float, t1: float) -> float:
        """CPU seconds the process used between wall times t0 and t1 (linear between samples)."""
        return self._at(pid, t1) - self._at(pid, t0)

    def threads_between(self, pid: int, t0: float, t1: float) -> dict[int, float]:
        """CPU seconds each thread (by id; the main thread's id is ``pid``) used between t0 and t1.

        Only threads sampled alive on both sides of the window are counted (a thread's CPU is read from
        its own /proc entry, gone when it ends).
        """
        s = self.thread_series.get(pid) or []
        per_tid: dict[int, list[tuple[float, float]]] = {}
        for t, cpu in s:
            for tid, c in cpu.items():
                per_tid.setdefault(tid, []).append((t, c))
        return {
            tid: _interpolate(xs, t1) - _interpolate(xs, t0)
            for tid, xs in per_tid.items()
            if xs[0][0] <= t0 and xs[-1][0] >= t1
        }

    def _at(self, pid: int, t: float) -> float:
        return _interpolate([(ts, cpu) for ts, cpu, _ in self.series.get(pid) or []], t)

    def peak_rss(self, pid: int) -> int:
        return max((r for _, _, r in self.series.get(pid) or []), default=0)


def _interpolate(series: Sequence[tuple[float, float]], t: float) -> float:
    """A cumulative counter's value at wall time t, linear between samples (clamped at the ends)."""
    if not series:
        return float("nan")
    if t <= series[0][0]:
        return series[0][1]
    for (ta, ca), (tb, cb) in itertools.pairwise(series):
        if ta <= t <= tb:
            return ca + (cb - ca) * ((t - ta) / (tb - ta) if tb > ta else 0.0)
    return series[-1][1]


# --- counting keystrokes in a window ----------------------------------------------------------------


def window_of(ready_at: float, starts: Sequence[float], warm_s: float, tail_s: float) -> tuple[float, float]:
    """The counting window: from ``ready_at + warm_s`` to the last keystroke start minus ``tail_s``."""
    return ready_at + warm_s, max(starts, default=ready_at) - tail_s


def rate_in(starts: Sequence[float], t0: float, t1: float) -> tuple[int, float]:
    """(operations started in [t0, t1), per second)."""
    n = sum(1 for t in starts if t0 <= t < t1)
    return n, n / (t1 - t0) if t1 > t0 else float("nan")


# --- the pure-asyncio baseline ----------------------------------------------------------------------


async def _baseline_client(
    port: int, host_key_pub: Path, sessions: int, seconds: float, keepalive_s: float
) -> dict[str, Any]:
    import asyncio

    import asyncssh

    trusted = [asyncssh.read_public_key(host_key_pub)]
    gate = asyncio.Semaphore(50)

    async def open_shell() -> Any:
        async with gate:
            conn = await asyncssh.connect(
                "127.0.0.1", port, username=USERNAME, password=PASSWORD, known_hosts=(trusted, [], []),
                client_keys=None, agent_path=None, config=None, keepalive_interval=keepalive_s,
                keepalive_count_max=3, preferred_auth="password",
            )  # fmt: skip
            proc = await conn.create_process(term_type="xterm", term_size=(80, 24), encoding=None)
            await proc.stdout.readuntil(PROMPT)
            return conn, proc

    shells = await asyncio.gather(*(open_shell() for _ in range(sessions)))
    ready_at = time.time()
    deadline = time.perf_counter() + seconds
    starts: list[float] = []
    durations: list[float] = []

    async def loop(proc: Any) -> None:
        stdin, stdout = proc.stdin, proc.stdout
        while time.perf_counter() < deadline:
            start = time.time()
            t0 = time.perf_counter()
            stdin.write(b"k")
            if await stdout.readexactly(1) != b"k":
                raise RuntimeError("bad echo")
            durations.append((time.perf_counter() - t0) * 1000.0)
            starts.append(start)

    await asyncio.gather(*(loop(proc) for _, proc in shells))
    for conn, _ in shells:
        conn.close()
    await asyncio.gather(*(conn.wait_closed() for conn, _ in shells), return_exceptions=True)
    return {"ready_at": ready_at, "starts": starts, "durations_ms": durations}


def baseline_main(args: argparse.Namespace) -> int:
    """``baseline``: the pure asyncio keystroke loop; writes its keystroke start times as JSON."""
    import asyncio

    raise_nofile()
    result = asyncio.run(
        _baseline_client(args.port, Path(args.host_key), args.sessions, args.seconds, args.keepalive_s)
    )
    Path(args.out).write_text(json.dumps(result))
    return 0


# --- the benchmark ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    sessions: int
    seconds: float  # typing time of each side (after its shells are ready)
    warm_s: float
    tail_s: float
    burst_keys: int
    rounds: int


FULL = Settings(sessions=50, seconds=20.0, warm_s=2.0, tail_s=2.0, burst_keys=100, rounds=5)
SMOKE = Settings(sessions=5, seconds=3.0, warm_s=0.5, tail_s=0.5, burst_keys=20, rounds=1)

THREAD_FIGURES = ("main_thread_us_per_op", "loop_thread_us_per_op", "other_threads_us_per_op")

WORKLOAD = {
    "think_min_s": 0.0,
    "think_max_s": 0.0,
    "typing_interval_ms": 0.0,  # unpaced: each key as soon as the previous one's echo is back
    "timeout_s": 10.0,
    "mix": {"typing": 1.0},
}


def read_samples(results_dir: Path) -> Any:
    """All raw samples of the single run under ``results_dir`` as a pandas DataFrame."""
    from gateload.analysis.schema import SAMPLES_DIR
    from gateload.analysis.schema import read_samples as read

    runs = [p.parent for p in results_dir.rglob(SAMPLES_DIR)]
    if len(runs) != 1:
        raise RuntimeError(f"expected one run folder under {results_dir}, found {len(runs)}")
    return read(runs[0]).to_pandas()


def run_gateload(s: Settings, profile: Path, work: Path, sampler: CpuSampler) -> dict[str, Any]:
    """GatewayUser under headless Locust (one process); keystrokes counted from the recorder's samples."""
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results"
    run_time = int(s.seconds + 4 + s.sessions / 25)
    cmd = [LOCUST, "-f", str(ROOT / "locustfiles" / "homeoffice.py"), "--headless", "--only-summary",
           "-u", str(s.sessions), "-r", str(s.sessions), "-t", f"{run_time}s", "--stop-timeout", "0",
           "--profile", str(profile), "--results-dir", str(results), "--label", "bench",
           "--loglevel", "WARNING", "GatewayUser"]  # fmt: skip
    log = work / "locust.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        sampler.watch(proc.pid, threads=True)
        try:
            code = proc.wait(run_time + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(f"locust did not stop; log: {log}") from None
    if code not in (0, 1):
        raise RuntimeError(f"locust exited {code}: {log.read_text()[-3000:]}")
    df = read_samples(results)
    shells = df[(df["name"] == "shell") & df["success"]]
    if len(shells) < s.sessions:
        raise RuntimeError(f"only {len(shells)} of {s.sessions} shells opened; log: {log}")
    ready_at = float((shells["t_start"] + shells["duration_ms"] / 1000.0).max())
    keys = df[(df["name"] == "keystroke") & (df["type"] == "SSH")]
    failed = int((~keys["success"]).sum())
    starts = keys.loc[keys["success"], "t_start"].tolist()
    return {"pid": proc.pid, "ready_at": ready_at, "starts": starts, "failed": failed,
            "durations_ms": keys.loc[keys["success"], "duration_ms"].tolist()}  # fmt: skip


def run_baseline(s: Settings, port: int, host_key: Path, work: Path, sampler: CpuSampler) -> dict[str, Any]:
    out = work / "baseline.json"
    cmd = [sys.executable, __file__, "baseline", "--port", str(port), "--host-key", str(host_key),
           "--sessions", str(s.sessions), "--seconds", str(s.seconds), "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd)
    sampler.watch(proc.pid)
    code = proc.wait(s.seconds + 60 + s.sessions / 10)
    if code != 0:
        raise RuntimeError(f"baseline client exited {code}")
    data = json.loads(out.read_text())
    data["pid"] = proc.pid
    data["failed"] = 0
    return data


def measure(side: dict[str, Any], s: Settings, sampler: CpuSampler, server_pid: int) -> dict[str, float]:
    t0, t1 = window_of(side["ready_at"], side["starts"], s.warm_s, s.tail_s)
    n, rate = rate_in(side["starts"], t0, t1)
    client_cpu = sampler.cpu_between(side["pid"], t0, t1)
    server_cpu = sampler.cpu_between(server_pid, t0, t1)
    durations = _percentiles(side["durations_ms"])
    return {
        **_threads_per_op(sampler.threads_between(side["pid"], t0, t1), side["pid"], n),
        "ops": n,
        "ops_per_s": rate,
        "window_s": t1 - t0,
        "client_cpu_us_per_op": client_cpu / n * 1e6 if n else float("nan"),
        "client_cpu_util": client_cpu / (t1 - t0),
        "server_cpu_util": server_cpu / (t1 - t0),
        "p50_ms": durations["p50"],
        "p99_ms": durations["p99"],
        "failed": side["failed"],
    }


def _threads_per_op(cpu: dict[int, float], pid: int, n: int) -> dict[str, float]:
    """The Locust process's CPU per keystroke by thread: the main thread (gevent's hub and the users'
    greenlets), the busiest other thread (the asyncio loop: all SSH work) and the rest (the recorder's
    part writer...). Empty when the threads were not sampled (the baseline has one thread)."""
    if not cpu or not n or pid not in cpu:
        return {}
    others = sorted((c for tid, c in cpu.items() if tid != pid), reverse=True) or [0.0]
    return {
        "main_thread_us_per_op": cpu[pid] / n * 1e6,
        "loop_thread_us_per_op": others[0] / n * 1e6,
        "other_threads_us_per_op": sum(others[1:]) / n * 1e6,
    }


def run(s: Settings) -> dict[str, Any]:
    """Alternate baseline and gateload ``rounds`` times against one echo server; medians of each."""
    import statistics

    raise_nofile()
    # the work folder holds a run's raw results and profiles: scratch, removed with the run
    with tempfile.TemporaryDirectory(prefix="gateload-bench-ssh-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        load_before = load_average()
        workload = {**WORKLOAD, "burst_keys": s.burst_keys}
        rounds: list[tuple[dict[str, float], dict[str, float]]] = []
        with EchoServerProcess({"echo": 0.0}) as server, CpuSampler() as sampler:
            sampler.watch(server.pid)
            profile = write_profile(work, server.ports["echo"], server.host_key_pub, workload=workload)
            for i in range(s.rounds):
                # Alternating which side goes first (ABBA...) keeps a drift of the machine's speed during the
                # run from favouring one side; each round's ratio compares two runs a minute apart at most.
                sides: dict[str, dict[str, float]] = {}
                for side in ("baseline", "gateload") if i % 2 == 0 else ("gateload", "baseline"):
                    if side == "baseline":
                        raw = run_baseline(s, server.ports["echo"], server.host_key_pub, work, sampler)
                    else:
                        raw = run_gateload(s, profile, work / f"round-{i}", sampler)
                    sides[side] = measure(raw, s, sampler, server.pid)
                rounds.append((sides["baseline"], sides["gateload"]))
    ratios = [g["ops_per_s"] / b["ops_per_s"] for b, g in rounds]
    cpu_ratios = [b["client_cpu_us_per_op"] / g["client_cpu_us_per_op"] for b, g in rounds]

    def med(side: int, key: str) -> float:
        return statistics.median(r[side][key] for r in rounds)

    figures = {
        "gateway_ops_per_s": med(1, "ops_per_s"),
        "baseline_ops_per_s": med(0, "ops_per_s"),
        "ssh_ratio": statistics.median(ratios),
        "ssh_ratio_min": min(ratios),
        "ssh_ratio_max": max(ratios),
        "gateway_cpu_us_per_op": med(1, "client_cpu_us_per_op"),
        "baseline_cpu_us_per_op": med(0, "client_cpu_us_per_op"),
        "cpu_efficiency_ratio": statistics.median(cpu_ratios),
        "gateway_client_cpu_util": med(1, "client_cpu_util"),
        "baseline_client_cpu_util": med(0, "client_cpu_util"),
        "server_cpu_util_during_gateway": med(1, "server_cpu_util"),
        "server_cpu_util_during_baseline": med(0, "server_cpu_util"),
        **{f"gateway_{key}": med(1, key) for key in THREAD_FIGURES if all(key in g for _, g in rounds)},
        "gateway_p50_ms": med(1, "p50_ms"),
        "baseline_p50_ms": med(0, "p50_ms"),
    }
    notes = (
        f"{s.sessions} sessions, {s.rounds} round(s) of baseline and gateload (alternating which goes "
        f"first), {s.seconds:g} s typing each; ssh_ratio is the median of the rounds; "
        f"ratios per round {', '.join(f'{r:.3f}' for r in ratios)}; failed keystrokes "
        f"{sum(g['failed'] for _, g in rounds)}; load average before {load_before[0]:.2f}, "
        f"after {load_average()[0]:.2f}. Target: ssh_ratio >= 0.8."
    )
    return {"figures": figures, "notes": notes, "target_met": figures["ssh_ratio"] >= 0.8}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("serve", help="run the echo server until SIGTERM")
    p.add_argument("--dir", required=True)
    p.add_argument("--listen", default="echo:0", help="NAME:DELAY_MS[,NAME:DELAY_MS...]")
    p.add_argument("--status-s", type=float, default=1.0)
    p.add_argument("--nice", type=int, default=0, help="process priority (negative: higher; needs root)")
    p = sub.add_parser("baseline", help="the pure asyncio keystroke loop (internal)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host-key", required=True)
    p.add_argument("--sessions", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--keepalive-s", type=float, default=15.0)
    p.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run; nothing appended")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return serve_main(args)
    if args.cmd == "baseline":
        return baseline_main(args)
    return report("ssh", run(SMOKE if args.smoke else FULL), smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
