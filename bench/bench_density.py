"""Density: how many active homeoffice sessions one generator core drives at human pace (issue 15).

Each subject, a (name, user class, peer) entry of :data:`SUBJECTS`, runs in ONE Locust process
(Locust's local runner, the real user class, bridge and recorder) pinned to one core with
``os.sched_setaffinity``; its peer runs on the other core. Users are ramped in steps (fixed hold per
step, a maximum session count) until a limit is crossed:

- **timing error** of the paced operations (keystrokes, VPN keepalives, RDP keys: the profile's 150 ms
  typing pace), measured as bench_timing does: how late each paced operation started against its
  intended start (``t_start - t_intended``): p50 <= 1 ms, p99 <= 5 ms;
- **paced shortfall**: the catalogue's paced operations, achieved vs planned rate per user
  (``gateload.analysis.health.paced_rate``), <= 10 % (``gateload.analysis.health.PACED_TOLERANCE``);
- **sessions**: no failed operation in the step, and at least 90 % of its users logged on (a real
  server that refuses or cannot start sessions).

The figure is sessions per core at the limit: the largest step within every limit, for each user
class, with the limit that stopped the ramp. Recorded with each step: Locust's CPU warnings (its
"CPU usage above 90%" log, ``events.cpu_warning``) and the CPU it reported, the process's own CPU
share, and Little's law (``gateload.analysis.health.little_check``: ``X (R + Z) / N``, 1 when the users spent
their time in operations and declared think time and nowhere else).

For the SSH subjects (``gatewayuser``, ``homeofficeuser``) the peer is the reference farm in its
**relaxed zero-service variant** (``reference-zero``: the reference-before profile's workload, accounts
and documents, every service time ~0, room for every session): portal with tickets, SSH shell, screen
updates, SFTP and tunnels answer at once, so what is measured is the generator. The workload is the
profile's own human pace: typing 150 ms per key in 12-key bursts, screen updates, SFTP, tunnels, exec,
think 1-3 s.

The protocol subjects run GatewayUser against real servers, relaxed, at the same workload (the mix cut
to what the protocol serves), and need root and the Debian packages (a missing one skips the subject
with a one-line note; under ``CI=true`` it is an error):

- ``vpn``: ``protocol = "vpn"`` against ocserv (:mod:`gateload.targets.local.ocserv`, relaxed: no anti-abuse
  limits), one account and one 127.0.0.x (``gateway.source_addresses``) per user; the paced operation
  is ``VPN keepalive`` (a DPD round trip through the tunnel per "keystroke"), with pings (``tunnel``);
- ``rdp``: ``protocol = "rdp"`` against xrdp (:mod:`gateload.targets.local.xrdp`, relaxed: sesman's session
  cap raised), one stock account per user; the paced operation is ``RDP key`` (a key press until the
  screen update it causes). Every session starts an Xorg and an xterm on the server's core, so the
  server, not the generator, may be the limit; the ramp is capped at :data:`RDP_CAP` sessions and
  ramps at 2 logons/s (xrdp's listen backlog of 2).

Each step records the peer's share of its core; the limit that stopped a ramp is named
``generator`` or ``server`` (:func:`limit_side`), ``cap`` (the subject's own maximum reached) or
``none``.

Adding a protocol user is one entry in :data:`SUBJECTS`: its user class and a peer (a context manager
that yields the profile path and the peer's process ids), with its own steps and logon pace if the
server needs them.

    .venv/bin/python bench/bench_density.py            # full (~7 minutes per subject at most)
    .venv/bin/python bench/bench_density.py --smoke    # seconds (~55 s for all four), nothing recorded
    .venv/bin/python bench/bench_density.py --only vpn,rdp      # (or --subjects)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

LATE_P50_MS, LATE_P99_MS = 1.0, 5.0  # timing error limits (issue 7's, as bench_timing)
SOURCE_PROFILE = ROOT / "targets" / "profiles" / "reference-before.toml"
CLIENT_CORE, PEER_CORE = 0, 1
SPAWN_RATE = 100.0  # users per second while a step ramps
RESULT = "DENSITY-STEP "  # the client's per-step JSON lines start with this
LOGGED_ON = 0.9  # share of a step's users logged on before its settle time starts
LOGON_BUDGET_S = 0.05  # longest wait for the logons, per user of the step (plus 30 s)


@dataclass(frozen=True)
class Settings:
    steps: tuple[int, ...]  # session counts, ramped in order until a limit is crossed
    hold_s: float  # measured seconds per step, after its users are all running
    settle_s: float  # seconds after the ramp before measuring (logons, first bursts)
    warmup_s: float  # more settling before the first step only (the process's first flushes, collections)
    min_paced: int  # a step is held longer (up to 3 x hold_s) until this many paced operations are in it


FULL = Settings(
    steps=(10, 50, 100, 200, 300, 400, 600, 800, 1000, 1200),
    hold_s=10.0,
    settle_s=4.0,
    warmup_s=10.0,
    min_paced=600,
)
# min_paced: a smoke step must still hold a paced operation to report on; with 2 RDP users, a 4 s window
# on a slow CI machine held none (their bursts are recorded when they end, ~2 s after they start)
SMOKE = Settings(steps=(8, 16), hold_s=4.0, settle_s=1.0, warmup_s=1.0, min_paced=12)


# --- subjects: (user class, profile, peer) ----------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A running peer: the profile the users load and the processes to pin to the peer core."""

    profile: Path
    pids: tuple[int, ...]


@dataclass(frozen=True)
class Subject:
    """One user class at human pace against its peer (zero-delay farm, or a relaxed real server)."""

    name: str  # the figure's prefix and the --only name
    user_class: str  # "module:Class"
    peer: Callable[[Path, int], contextlib.AbstractContextManager[Peer]]  # (work dir, max users)
    spawn_rate: float = SPAWN_RATE  # users per second while a step ramps
    logon_s: float = LOGON_BUDGET_S  # longest wait for a step's logons, per user (plus 30 s)
    steps: tuple[int, ...] = ()  # full-run steps when not Settings.steps (a server's own cap)
    smoke_steps: tuple[int, ...] = ()  # smoke-run steps when not Settings.steps
    cap: str = ""  # why the steps stop where they do, when that is not the generator's business

    def steps_for(self, s: Settings, smoke: bool) -> tuple[int, ...]:
        """This subject's steps in a run with settings ``s``."""
        return (self.smoke_steps if smoke else self.steps) or s.steps


def zero_farm_profile(work: Path, max_users: int) -> Path:
    """reference-before with every service time ~0 and room for ``max_users`` sessions (relaxed).

    The workload (the human pace), accounts' shape and documents stay the profile's; the farm gets
    one account per session, servers that never queue or refuse, and service times of nanoseconds
    (``constant`` 0.001 ms at speed 1000: the farm's ``asyncio.sleep`` of ~0 never waits for a timer).
    """
    import tomli_w

    data = tomllib.loads(SOURCE_PROFILE.read_text())
    state = work / "farm-state"
    description = "relaxed: reference-before with zero service time (bench_density)"
    data["target"] = {"name": "reference-zero", "kind": "reference", "description": description}
    data["gateway"]["host_key"] = str(state / "ssh_host_key.pub")
    data["credentials"]["file"] = str(state / "credentials.csv")
    farm = data["farm"]
    farm["state_dir"] = str(state)
    farm["accounts"] = max_users + 20
    ms = ("portal_page_ms", "portal_login_ms", "portal_launch_ms", "ssh_auth_ms", "keystroke_ms",
          "screen_update_ms", "tunnel_request_ms")  # fmt: skip
    farm["service"] = {"distribution": "constant", "sftp_mb_per_s": 1e6, **dict.fromkeys(ms, 0.001)}
    farm["servers"] = [{"name": "zero", "count": 4, "workers": 64, "max_sessions": max_users,
                        "queue_limit": 100_000, "speed": 1000.0}]  # fmt: skip
    path = work / "reference-zero.toml"
    path.write_text(tomli_w.dumps(data))
    return path


@contextlib.contextmanager
def zero_farm(work: Path, max_users: int) -> Iterator[Peer]:
    """The relaxed zero-service reference farm in its own process."""
    from gateload.targets.reference.harness import FarmProcess

    with FarmProcess(zero_farm_profile(work, max_users), state_dir=work / "farm-state") as farm:
        yield Peer(farm.profile_path, (farm.pid,))


def protocol_profile(work: Path, name: str, credentials: Path, **gateway: Any) -> Path:
    """The shipped local-real profile pointed at a real server of ``gateway.protocol``, with the
    reference-before workload (the same human pace as the farm subjects: 150 ms per key, 12-key
    bursts, think 1-3 s; the mix cut to what the protocol serves) and that server's accounts."""
    import dataclasses

    from gateload.targets.profile import dump_profile, load_profile

    base = load_profile(ROOT / "targets" / "profiles" / "local-real.toml")
    workload = load_profile(SOURCE_PROFILE).workload
    profile = dataclasses.replace(
        base,
        gateway=dataclasses.replace(base.gateway, host_key="", **gateway),
        credentials=dataclasses.replace(base.credentials, file=str(credentials)),
        workload=workload,
    )
    return dump_profile(profile, work / f"{name}.toml")


def source_range(users: int) -> str:
    """``gateway.source_addresses`` giving each of ``users`` users its own 127.0.0.x (from 127.0.0.2)."""
    import ipaddress

    first = ipaddress.IPv4Address("127.0.0.2")
    return f"{first}-{first + max(1, users) - 1}"


@contextlib.contextmanager
def ocserv_peer(work: Path, max_users: int) -> Iterator[Peer]:
    """A relaxed ocserv (Debian's settings, anti-abuse limits off), one account and one 127.0.0.x per user."""
    from gateload.targets.local.ocserv import Ocserv

    vpn = Ocserv(work / "ocserv", accounts=max_users, relaxed=True)  # MissingTool: no binary or root
    with vpn:
        assert vpn.ca is not None and vpn.daemon is not None and vpn.daemon.proc is not None
        profile = protocol_profile(
            work, "ocserv-relaxed", vpn.credentials, host=vpn.host, port=vpn.port, protocol="vpn",
            ca_file=str(vpn.ca.ca_cert), source_addresses=source_range(max_users),
        )  # fmt: skip
        yield Peer(profile, (vpn.daemon.proc.pid,))


@contextlib.contextmanager
def xrdp_peer(work: Path, max_users: int) -> Iterator[Peer]:
    """A relaxed xrdp (sesman's session cap raised), one stock account (one Xorg session) per user."""
    from gateload.targets.local.xrdp import Xrdp

    server = Xrdp(work / "xrdp", accounts=max_users, relaxed=True)  # MissingTool: no binary or root
    with server:
        profile = protocol_profile(
            work, "xrdp-relaxed", server.credentials, host=server.host, port=server.port, protocol="rdp",
            cert_fingerprint=server.cert_fingerprint,
        )  # fmt: skip
        # sesman (the Xorg sessions below it) and xrdp (a child per connection): the server's side
        yield Peer(profile, pids_with_arg(str(server.state_dir)))


def pids_with_arg(text: str) -> tuple[int, ...]:
    """The topmost processes with ``text`` in an argument (daemons started with a config from our
    private folder), not their forked children: the CPU sampler counts those with their parent."""
    found: dict[int, int] = {}  # pid -> parent pid
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if any(text in a for a in argv):
                    stat = (proc / "stat").read_text()
                    found[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return tuple(sorted(pid for pid, parent in found.items() if parent not in found))


#: RDP: every session starts an Xorg and an xterm on the server, on the peer's one core, so the ramp is
#: capped at a count this machine holds; logons are ramped slowly (xrdp's listen backlog of 2, and an
#: Xorg start per logon).
RDP_CAP = 40

SUBJECTS: tuple[Subject, ...] = (
    Subject("gatewayuser", "gateload.locustfiles.lib.remoteuser:GatewayUser", zero_farm),
    Subject("homeofficeuser", "gateload.locustfiles.lib.session:HomeofficeUser", zero_farm),
    Subject(
        "vpn",
        "gateload.locustfiles.lib.remoteuser:GatewayUser",
        ocserv_peer,
        spawn_rate=20.0,
        logon_s=0.2,
        smoke_steps=(4, 8),
    ),
    Subject(
        "rdp",
        "gateload.locustfiles.lib.remoteuser:GatewayUser",
        xrdp_peer,
        spawn_rate=2.0,
        logon_s=1.5,
        steps=(5, 10, 20, 30, RDP_CAP),
        smoke_steps=(2, 4),
        cap=f"capped at {RDP_CAP} sessions: an Xorg + xterm each on the server's core",
    ),
)


# --- pinning ----------------------------------------------------------------------------------------


def cores() -> list[int]:
    """The cores this process may run on."""
    return sorted(os.sched_getaffinity(0))


def pin_tree(pid: int, core: int) -> None:
    """Pin every thread of ``pid`` and of its children to ``core`` (later threads inherit it)."""
    from bench_endurance import tree

    for p in tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), {core})


# --- the client process -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def client_main(args: argparse.Namespace) -> int:
    """``client``: one Locust local runner ramping ``--user-class`` through ``--steps``; JSON per step."""
    if args.core >= 0:
        os.sched_setaffinity(0, {args.core})  # before any thread starts: they inherit it
    os.environ["GATELOAD_PROFILE"] = args.profile
    import importlib
    import logging

    import gevent
    import locust  # noqa: F401  (gevent's monkey-patching first, as under the locust command)
    import numpy as np

    logging.getLogger().setLevel(logging.ERROR)  # Locust's CPU warning is counted, not printed
    from bench_ssh import raise_nofile
    from locust.env import Environment

    from gateload.analysis import health
    from gateload.locustfiles.lib import gcfreeze
    from gateload.locustfiles.lib.recorder import Recorder
    from gateload.targets.profile import load_profile

    raise_nofile()

    module, _, name = args.user_class.partition(":")
    user_class = getattr(importlib.import_module(module), name)
    profile = load_profile(args.profile)
    catalogue = user_class.operations(profile)
    paced = {}  # "<type> <name>" -> planned ops/s per user
    for op in catalogue.paced:
        value: Any = profile
        for part in (op.rate_from or "").split("."):
            value = getattr(value, part, None)
        if isinstance(value, int | float) and value > 0:
            paced[op.key] = 1000.0 / value
    aggregates = catalogue.aggregates
    w = profile.workload
    think_s = (w.think_min_s + w.think_max_s) / 2.0

    cols: dict[str, list[Any]] = {k: [] for k in ("t", "ti", "dur", "user", "key", "ok")}

    def on_request(request_type: str, name: str, response_time: float, exception: Any = None,
                   context: Any = None, start_time: float | None = None, **_kw: Any) -> None:  # fmt: skip
        ctx = context or {}
        cols["t"].append(start_time if start_time is not None else ctx.get("start_time", time.time()))
        ti = ctx.get("t_intended")
        cols["ti"].append(np.nan if ti is None else ti)
        cols["dur"].append(response_time)
        cols["user"].append(ctx.get("user_id") or -1)
        cols["key"].append(f"{request_type} {name}")
        cols["ok"].append(exception is None)

    cpu: dict[str, Any] = {"warnings": 0, "reported": []}
    env = Environment(user_classes=[user_class])
    runner = env.create_local_runner()
    env.events.request.add_listener(on_request)
    env.events.cpu_warning.add_listener(lambda **_kw: cpu.__setitem__("warnings", cpu["warnings"] + 1))
    env.events.usage_monitor.add_listener(lambda cpu_usage, **_kw: cpu["reported"].append(cpu_usage))
    recorder = Recorder(env)
    gcfreeze.install(env)  # as every gateload Locust process has it (locustfiles/lib/runfolder.py)
    recorder.start("density", Path(args.results_dir))
    stopped_by = ""
    steps = [int(s) for s in args.steps.split(",")]
    first = steps[0]
    for users in steps:
        runner.start(users, spawn_rate=args.spawn_rate)
        # Measured once the step's sessions are up (a logon storm is not the steady load): every
        # user spawned and at least LOGGED_ON of them holding a usable session, bounded in time.
        deadline = time.monotonic() + 30 + users / args.spawn_rate + users * args.logon_s
        while time.monotonic() < deadline and (
            runner.user_count < users or _logged_on(runner) < LOGGED_ON * users
        ):
            gevent.sleep(0.1)
        gevent.sleep(args.settle_s + (args.warmup_s if users == first else 0.0))
        warnings0, reported0 = cpu["warnings"], len(cpu["reported"])
        t0, cpu0 = time.time(), os.times()
        gevent.sleep(args.hold_s)
        # p99 over at least min_paced samples (the 6th highest of 600), bounded: 3 x hold_s
        while time.time() < t0 + 3 * args.hold_s and _paced_since(cols, t0, paced) < args.min_paced:
            gevent.sleep(1.0)
        t1, cpu1 = time.time(), os.times()
        step = _step_figures(cols, t0, t1, paced, aggregates, think_s, runner.user_count, health, np)
        busy = cpu1.user + cpu1.system - cpu0.user - cpu0.system
        step.update(users=users, running=runner.user_count, logged_on=_logged_on(runner), t0=t0, t1=t1,
                    cpu_warnings=cpu["warnings"] - warnings0,
                    locust_cpu_percent=max(cpu["reported"][reported0:], default=float("nan")),
                    client_cpu_util=busy / (t1 - t0))  # fmt: skip
        stopped_by = _limit_crossed(step)
        step["stopped_by"] = stopped_by
        print(RESULT + json.dumps(step), flush=True)
        if stopped_by:
            break
    runner.quit()
    result = recorder.finish()
    print(RESULT + json.dumps({"done": True, "rows": result.rows, "problems": result.problems}), flush=True)
    return 0


def _paced_since(cols: dict[str, list[Any]], t0: float, paced: dict[str, float]) -> int:
    """Paced operations recorded that started at or after ``t0`` (newest rows last: read from the end)."""
    n = 0
    keys, starts = cols["key"], cols["t"]
    for i in range(len(starts) - 1, -1, -1):
        if starts[i] < t0 - 60.0:  # rows arrive out of start order by at most an operation's time
            break
        n += starts[i] >= t0 and keys[i] in paced
    return n


def _logged_on(runner: Any) -> int:
    """Running users whose remote session is usable (logged on, not dropped)."""
    count = 0
    for greenlet in list(runner.user_greenlets):
        user = greenlet.args[0] if greenlet.args else None
        remote = getattr(user, "remote", None)
        count += bool(remote is not None and remote.usable)
    return count


def _step_figures(cols: dict[str, list[Any]], t0: float, t1: float, paced: dict[str, float],
                  aggregates: frozenset[str], think_s: float, users: int, health: Any,
                  np: Any) -> dict[str, Any]:  # fmt: skip
    """One step's figures from the samples that started in [t0, t1)."""
    t = np.asarray(cols["t"], dtype=float)
    n = len(t)  # the lists grow while we read: take one length for all
    t = t[:n]
    ti = np.asarray(cols["ti"][:n], dtype=float)
    dur = np.asarray(cols["dur"][:n], dtype=float)
    user = np.asarray(cols["user"][:n], dtype=np.int64)
    key = np.asarray(cols["key"][:n], dtype=object)
    ok = np.asarray(cols["ok"][:n], dtype=bool)
    win = (t >= t0) & (t < t1)
    out: dict[str, Any] = {"seconds": t1 - t0, "ops": int(win.sum()), "failures": int((win & ~ok).sum())}
    is_paced = np.isin(key, list(paced)) & win & ok & np.isfinite(ti)
    late = (t[is_paced] - ti[is_paced]) * 1000.0
    out["paced_ops"] = int(is_paced.sum())
    out["paced_per_s"] = out["paced_ops"] / (t1 - t0)
    out["late_p50_ms"] = percentile(late.tolist(), 50)
    out["late_p99_ms"] = percentile(late.tolist(), 99)
    out["echo_p50_ms"] = percentile(dur[is_paced].tolist(), 50)
    out["echo_p99_ms"] = percentile(dur[is_paced].tolist(), 99)
    shortfalls = []
    for op, planned in paced.items():
        sel = win & ok & (key == op)
        rate = health.paced_rate(user[sel], t[sel], ti[sel], planned)
        shortfalls.append(rate.shortfall)
    out["paced_shortfall"] = max((s for s in shortfalls if np.isfinite(s)), default=float("nan"))
    ops = win & ~np.isin(key, list(aggregates))
    little = health.little_check(user[ops], t[ops], dur[ops], think_s, float(users))
    out["little_ratio"] = little.ratio if little is not None else float("nan")
    out["little"] = little.describe() if little is not None else "too few think pauses to check"
    return out


def _limit_crossed(step: dict[str, Any]) -> str:
    """The limits this step crossed, as text ('' when within every limit)."""
    from gateload.analysis.health import PACED_TOLERANCE

    crossed = []
    if step["paced_ops"] == 0:
        crossed.append("no paced operation in the step")
    if step["late_p50_ms"] > LATE_P50_MS:
        crossed.append(f"lateness p50 {step['late_p50_ms']:.2f} ms > {LATE_P50_MS:g} ms")
    if step["late_p99_ms"] > LATE_P99_MS:
        crossed.append(f"lateness p99 {step['late_p99_ms']:.2f} ms > {LATE_P99_MS:g} ms")
    if step["paced_shortfall"] > PACED_TOLERANCE:
        crossed.append(f"paced shortfall {step['paced_shortfall']:.1%} > {PACED_TOLERANCE:.0%}")
    if step["running"] < step["users"]:
        crossed.append(f"only {step['running']} of {step['users']} users running")
    if step["logged_on"] < LOGGED_ON * step["users"]:  # a real server refusing or slow to log on
        crossed.append(f"only {step['logged_on']} of {step['users']} logged on")
    if step["failures"]:
        crossed.append(f"{step['failures']} failed operations")
    return "; ".join(crossed)


# --- the benchmark ----------------------------------------------------------------------------------


#: A core this busy (share of one core over a step) is saturated: the limit is on that side.
SATURATED = 0.9


@dataclass
class Outcome:
    """One subject's ramp: its steps, the figure and the limit that stopped it."""

    subject: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    sessions_per_core: int = 0
    stopped_by: str = ""
    limit: str = ""  # generator, server, cap (the subject's own maximum), none, or skipped
    peer_cpu_util: list[float] = field(default_factory=list)
    skipped: str = ""  # why the subject did not run (its server is missing here)


def limit_side(step: dict[str, Any], interval_ms: float) -> str:
    """Which side a step that crossed a limit ran out on: ``server`` or ``generator``.

    The server when its core was saturated, when it failed operations or logons, or when its answers
    took longer than the pace (a paced operation starts late because the one before it overran:
    lateness the server caused); else the generator, whose lateness it is.
    """
    if step.get("peer_cpu_util", 0.0) >= SATURATED and step["client_cpu_util"] < SATURATED:
        return "server"
    if step["failures"] or step["logged_on"] < LOGGED_ON * step["users"]:
        return "server"
    if step["echo_p99_ms"] > interval_ms and step["client_cpu_util"] < SATURATED:
        return "server"
    return "generator"


class Skipped(Exception):
    """A subject's server software is missing here (skipped, or an error under CI)."""


def in_ci() -> bool:
    """True under CI (``CI`` set to anything but empty, ``0`` or ``false``), as tests/needs.py."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def run_subject(subject: Subject, s: Settings, work: Path, pinned: bool, smoke: bool) -> Outcome:
    """One subject's ramp against its own peer (fresh for each subject)."""
    from bench_ssh import CpuSampler

    from gateload.targets.local.process import MissingTool

    outcome = Outcome(subject.name)
    steps = subject.steps_for(s, smoke)
    sub = work / subject.name
    sub.mkdir(parents=True)
    peer_cm = subject.peer(sub, max(steps))
    try:
        peer = peer_cm.__enter__()
    except MissingTool as exc:
        raise Skipped(str(exc)) from None
    try:
        from gateload.targets.profile import load_profile

        interval_ms = load_profile(peer.profile).workload.typing_interval_ms  # the pace (gone with the peer)
        # every 1 s: a VPN peer is one process per tunnel, walked each time
        with CpuSampler(step_s=1.0) as sampler:
            if pinned:
                for pid in peer.pids:
                    pin_tree(pid, PEER_CORE)
            for pid in peer.pids:
                sampler.watch(pid, tree=True)
            cmd = [sys.executable, __file__, "client", "--user-class", subject.user_class,
                   "--profile", str(peer.profile), "--steps", ",".join(map(str, steps)),
                   "--hold-s", str(s.hold_s), "--settle-s", str(s.settle_s), "--warmup-s", str(s.warmup_s),
                   "--min-paced", str(s.min_paced), "--spawn-rate", str(subject.spawn_rate),
                   "--logon-s", str(subject.logon_s),
                   "--results-dir", str(sub / "results" / "density" / "run"),
                   "--core", str(CLIENT_CORE if pinned else -1)]  # fmt: skip
            budget = (
                len(steps) * (3 * s.hold_s + s.settle_s + 30)
                + s.warmup_s
                + max(steps) / subject.spawn_rate
                + max(steps) * subject.logon_s
                + 60
            )
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            try:
                out, _ = proc.communicate(timeout=budget)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
    finally:
        peer_cm.__exit__(None, None, None)
    lines = [json.loads(x[len(RESULT) :]) for x in out.splitlines() if x.startswith(RESULT)]
    outcome.steps = [x for x in lines if "users" in x]
    done = [x for x in lines if x.get("done")]
    if proc.returncode != 0 or not done or not outcome.steps:
        raise RuntimeError(
            f"density client for {subject.name} failed (exit {proc.returncode}): {out[-2000:]}"
        )
    if done[0]["problems"]:
        raise RuntimeError(f"recorder problems: {done[0]['problems']}")
    for step in outcome.steps:  # the peer's share of its core in each step's measured window
        used = [sampler.cpu_between(pid, step["t0"], step["t1"]) for pid in peer.pids]
        step["peer_cpu_util"] = sum(u for u in used if math.isfinite(u)) / (step["t1"] - step["t0"])
    within = [x for x in outcome.steps if not x["stopped_by"]]
    outcome.sessions_per_core = within[-1]["users"] if within else 0
    last = outcome.steps[-1]
    if last["stopped_by"]:
        outcome.limit = limit_side(last, interval_ms)
        outcome.stopped_by = f"{last['users']} sessions ({outcome.limit}): {last['stopped_by']}"
    elif subject.cap and max(steps) == max(subject.steps):  # the full ramp's top (a smoke run stops lower)
        outcome.limit = "cap"
        outcome.stopped_by = f"none up to {max(steps)} sessions, {subject.cap}"
    else:
        outcome.limit = "none"
        outcome.stopped_by = f"none up to the maximum of {max(steps)} sessions"
    for pid in peer.pids:
        series = sampler.series.get(pid) or []
        if len(series) > 1:
            (ta, ca, _), (tb, cb, _) = series[0], series[-1]
            outcome.peer_cpu_util.append((cb - ca) / (tb - ta) if tb > ta else float("nan"))
    return outcome


PEERS = {
    "gatewayuser": "reference-zero (relaxed, zero service time)",
    "homeofficeuser": "reference-zero (relaxed, zero service time)",
    "vpn": "Debian ocserv, relaxed (anti-abuse limits off), one 127.0.0.x per user",
    "rdp": "Debian xrdp + xorgxrdp, relaxed (sesman MaxSessions 1000), one Xorg session per user",
}


def run(s: Settings, only: list[str], smoke: bool = False) -> dict[str, Any]:
    from bench_ssh import load_average, raise_nofile

    raise_nofile()
    load_before = load_average()
    pinned = len(cores()) >= 2 and {CLIENT_CORE, PEER_CORE} <= set(cores())
    if pinned:  # this process (the CPU sampler) and the peers it starts stay off the client's core
        os.sched_setaffinity(0, {PEER_CORE})
    work = Path(tempfile.mkdtemp(prefix="gateload-bench-density-"))
    subjects = [x for x in SUBJECTS if not only or x.name in only]
    outcomes = []
    try:
        for x in subjects:
            try:
                outcomes.append(run_subject(x, s, work, pinned, smoke))
            except Skipped as exc:
                if in_ci():
                    raise Skipped(f"{x.name}: CI must provide its server: {exc}") from None
                print(f"{x.name}: skipped ({exc})", flush=True)
                outcomes.append(Outcome(x.name, limit="skipped", skipped=str(exc)))
    finally:  # the peers' state holds accounts' passwords (credentials.csv); the notes keep the figures
        shutil.rmtree(work, ignore_errors=True)
    figures: dict[str, Any] = {}
    notes = []
    for o in outcomes:
        if o.skipped:
            notes.append(f"{o.subject}: skipped ({o.skipped})")
            continue
        at = next((x for x in o.steps if x["users"] == o.sessions_per_core), o.steps[0])
        figures[f"{o.subject}_sessions_per_core"] = o.sessions_per_core
        figures[f"{o.subject}_limit"] = o.limit
        figures[f"{o.subject}_late_p50_ms"] = at["late_p50_ms"]
        figures[f"{o.subject}_late_p99_ms"] = at["late_p99_ms"]
        figures[f"{o.subject}_paced_shortfall"] = at["paced_shortfall"]
        figures[f"{o.subject}_little_ratio"] = at["little_ratio"]
        figures[f"{o.subject}_cpu_warnings"] = sum(x["cpu_warnings"] for x in o.steps)
        steps = ", ".join(
            f"{x['users']}: {x['paced_ops']} paced in {x['seconds']:.0f} s, late p50/p99 "
            f"{x['late_p50_ms']:.2f}/{x['late_p99_ms']:.2f} ms, echo p99 {x['echo_p99_ms']:.1f} ms, short "
            f"{x['paced_shortfall']:.1%}, Little {x['little_ratio']:.2f}, CPU {x['client_cpu_util']:.0%}"
            f" (Locust {x['locust_cpu_percent']:.0f}%, {x['cpu_warnings']} warnings), peer "
            f"{x['peer_cpu_util']:.0%}, {x['paced_per_s']:.0f} paced/s, {x['logged_on']} logged on, "
            f"{x['failures']} failed"
            for x in o.steps
        )
        peer = "/".join(f"{u:.0%}" for u in o.peer_cpu_util) or "?"
        notes.append(
            f"{o.subject} (peer {PEERS.get(o.subject, '?')}): {o.sessions_per_core} sessions per core; "
            f"limit crossed at {o.stopped_by}; steps [{steps}]; Little at the figure's step: {at['little']}; "
            f"peer CPU {peer} of a core over the run"
        )
    ramps = "; ".join(f"{x.name} {','.join(map(str, x.steps_for(s, smoke)))}" for x in subjects)
    limits = (
        f"Limits: paced-operation start lateness p50 <= {LATE_P50_MS:g} ms, p99 <= {LATE_P99_MS:g} ms, "
        f"paced shortfall <= 10 %, no failures, >= {LOGGED_ON:.0%} logged on; steps ({ramps}) held "
        f"{s.hold_s:g} s after a {s.settle_s:g} s settle ({s.warmup_s:g} s more before the first); "
        + ("client pinned to core 0, peer to core 1" if pinned else "NOT pinned (fewer than 2 cores)")
        + f"; load average before {load_before[0]:.2f}, after {load_average()[0]:.2f}."
    )
    return {"figures": figures, "notes": " | ".join(notes) + " " + limits, "target_met": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("client", help="the measuring Locust process (internal)")
    p.add_argument("--user-class", required=True)
    p.add_argument("--profile", required=True)
    p.add_argument("--steps", required=True)
    p.add_argument("--hold-s", type=float, required=True)
    p.add_argument("--settle-s", type=float, required=True)
    p.add_argument("--warmup-s", type=float, default=0.0)
    p.add_argument("--min-paced", type=int, default=0)
    p.add_argument("--results-dir", required=True)
    p.add_argument("--core", type=int, default=-1)
    p.add_argument("--spawn-rate", type=float, default=SPAWN_RATE)
    p.add_argument("--logon-s", type=float, default=LOGON_BUDGET_S)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run; nothing appended")
    names = ",".join(x.name for x in SUBJECTS)
    parser.add_argument(
        "--only", "--subjects", dest="only", default="", help=f"comma-separated subjects, of {names}"
    )
    args = parser.parse_args(argv)
    if args.cmd == "client":
        return client_main(args)
    only = [x.strip().lower() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - {x.name for x in SUBJECTS}
    if unknown:
        parser.error(f"unknown subject(s) {', '.join(sorted(unknown))}; use {names}")
    from bench_ssh import report

    settings = SMOKE if args.smoke else FULL
    print(json.dumps(asdict(settings)))
    try:
        result = run(settings, only, smoke=args.smoke)
    except Skipped as exc:
        print(
            f"bench_density: {exc}; install the Debian packages (make test does) or run as root",
            file=sys.stderr,
        )
        return 2
    return report("density", result, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
