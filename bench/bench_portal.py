"""Benchmark 1, portal generator efficiency: PortalUser requests/s against a bare Locust FastHttpUser.

A tiny aiohttp server (a separate process, see :func:`serve_main`) answers the portal's requests with
canned responses. Two headless Locust runs hit it with identical ``-u``/``-r``/``-t`` and process count:

- **gateload**: ``locust -f locustfiles/homeoffice.py PortalUser`` with a profile pointing at the
  server: the real request path (``PortalClient``: CSRF parsing, JSON checks, backend labels, error
  classes) with the run folder and the sample recorder attached, think time 0;
- **baseline**: :class:`BarePortalUser` below, a plain FastHttpUser sending the same six requests of
  a visit (GET /login, POST /login, GET /api/apps, POST /api/launch, GET /documents/memo.pdf,
  POST /logout), as a typical hand-written locustfile would.

req/s comes from Locust's own stats (``--json-file``: requests over first-to-last request). The runs
alternate (baseline, gateload, ...) and the median of the per-round ratios is reported (target >= 0.9).
Beside it: each client's CPU per request and the server's CPU use, so a server-bound run (both sides
measuring the server) can be told from a generator-bound one.

    .venv/bin/python bench/bench_portal.py            # full (about a minute)
    .venv/bin/python bench/bench_portal.py --smoke    # a few seconds, nothing appended to RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

READY = "PORTAL-SERVER READY"
SERVER_ID = "bench-01"
CSRF = "c5rf-t0ken-0123456789"
DOCUMENT = "memo.pdf"
DOCUMENT_BYTES = 1024
TARGET_RATIO = 0.9


# --- the trivial portal (its own process) -----------------------------------------------------------


def serve_main(args: argparse.Namespace) -> int:
    """``serve``: aiohttp's low-level server with canned answers for the portal's requests."""
    import asyncio

    from aiohttp import web

    login_page = (
        "<html><body><form method='post' action='/login'>"
        f'<input type="hidden" name="csrf_token" value="{CSRF}">'
        "<input name='username'><input name='password' type='password'></form></body></html>"
    )
    answers: dict[tuple[str, str], tuple[str, str]] = {
        ("GET", "/login"): (login_page, "text/html"),
        ("POST", "/login"): ('{"mfa_required": false}', "application/json"),
        ("GET", "/api/apps"): ('{"apps": [{"id": "desktop", "name": "Desktop", "kind": "ssh"}]}',
                               "application/json"),
        ("POST", "/api/launch"): ('{"ticket": "t1ck3t", "host": "127.0.0.1", "port": 22, "username": '
                                  '"bench", "expires_at": 4102444800.0}', "application/json"),
        ("POST", "/logout"): ('{"ok": true}', "application/json"),
    }  # fmt: skip
    document = b"d" * DOCUMENT_BYTES
    headers = {"X-Gateload-Server": SERVER_ID}

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        key = (request.method, request.path)
        found = answers.get(key)
        if found is not None:
            resp = web.Response(text=found[0], content_type=found[1], headers=headers)
            if key == ("GET", "/login"):
                resp.set_cookie("gl_session", "s3ss10n")
            return resp
        if request.method == "GET" and request.path.startswith("/documents/"):
            return web.Response(body=document, content_type="application/octet-stream", headers=headers)
        return web.Response(status=404, headers=headers)

    async def main() -> None:
        server = web.Server(handle, access_log=None)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(server, sock=sock, backlog=1024)
        print(f"{READY} port={sock.getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        listener.close()
        await server.shutdown(1.0)

    asyncio.run(main())
    return 0


class PortalServerProcess:
    """The trivial portal as a child process; ``url`` once ready."""

    def __init__(self, timeout_s: float = 20.0) -> None:
        self.timeout_s = timeout_s
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> PortalServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        found: list[str] = []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith(READY):
                    found.append(line)
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(self.timeout_s)
        if not found:
            self.__exit__()
            raise RuntimeError("the portal server did not start")
        port = int(re.search(r"port=(\d+)", found[0]).group(1))  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *_exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the baseline user (only defined when Locust imports this file as a locustfile) -----------------

if __name__ != "__main__":
    from locust import FastHttpUser, constant, task

    _CSRF_VALUE = re.compile(r'name="csrf_token" value="([^"]*)"')

    class BarePortalUser(FastHttpUser):
        """A plain FastHttpUser doing one portal visit per task: the same requests as PortalUser."""

        wait_time = constant(0)

        @task
        def visit(self) -> None:
            with self.client.get("/login", name="GET /login", catch_response=True) as resp:
                found = _CSRF_VALUE.search(resp.text or "")
                if not found:
                    resp.failure("no csrf token")
                    return
            csrf = found.group(1)
            self.client.post(
                "/login",
                name="POST /login",
                data=f"username=bench&password=bench&csrf_token={csrf}",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            self.client.get("/api/apps", name="GET /api/apps")
            self.client.post(
                "/api/launch",
                name="POST /api/launch",
                json={"app": "desktop"},
                headers={"X-CSRF-Token": csrf},
            )
            self.client.get(f"/documents/{DOCUMENT}", name="GET /documents/[doc]")
            self.client.post("/logout", name="POST /logout", headers={"X-CSRF-Token": csrf})


# --- the benchmark ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    users: int
    seconds: int
    rounds: int
    processes: int = 1


FULL = Settings(users=20, seconds=15, rounds=3)
SMOKE = Settings(users=4, seconds=2, rounds=1)


def write_profile(folder: Path, url: str) -> Path:
    """A ``kind = "real"`` profile for the trivial portal: no think time, one small document."""
    import tomli_w

    creds = folder / "credentials.csv"
    # one account per running user (the trivial portal takes any)
    creds.write_text("username,password\n" + "".join(f"bench-{i:04d},bench\n" for i in range(1, 1001)))
    creds.chmod(0o600)
    data = {
        "target": {"name": "bench-portal", "kind": "real", "description": "gateload portal bench"},
        "portal": {"url": url},
        "gateway": {"host": "127.0.0.1", "port": 9, "verify_host_key": False},
        "credentials": {"file": str(creds)},
        "workload": {"think_min_s": 0.0, "think_max_s": 0.0, "documents": [DOCUMENT]},
    }
    path = folder / "portal-bench.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def locust_rate(json_path: Path) -> tuple[int, float, float, float, int]:
    """(requests, req/s, first, last, failures) from Locust's ``--json-file`` output."""
    entries = json.loads(json_path.read_text())
    n = sum(e["num_requests"] for e in entries)
    failures = sum(e["num_failures"] for e in entries)
    first = min(e["start_time"] for e in entries)
    last = max(e["last_request_timestamp"] for e in entries)
    return n, n / (last - first), first, last, failures


def run_side(side: str, s: Settings, url: str, profile: Path, work: Path, sampler: Any) -> dict[str, float]:
    work.mkdir(parents=True, exist_ok=True)
    from bench_ssh import LOCUST

    common = ["--headless", "--only-summary", "-u", str(s.users), "-r", str(s.users), "-t", f"{s.seconds}s",
              "--stop-timeout", "0", "--loglevel", "WARNING", "--json-file", str(work / "stats")]  # fmt: skip
    if s.processes > 1:
        common += ["--processes", str(s.processes)]
    if side == "gateload":
        cmd = [LOCUST, "-f", str(ROOT / "locustfiles" / "homeoffice.py"), *common, "--profile", str(profile),
               "--results-dir", str(work / "results"), "--label", "bench", "PortalUser"]  # fmt: skip
    else:
        cmd = [LOCUST, "-f", __file__, *common, "--host", url, "BarePortalUser"]
    log = work / "locust.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        sampler.watch(proc.pid, tree=True)
        try:
            code = proc.wait(s.seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(f"locust ({side}) did not stop; log {log}") from None
    if code not in (0, 1) or not (work / "stats.json").exists():
        raise RuntimeError(f"locust ({side}) exited {code}: {log.read_text()[-3000:]}")
    n, rate, first, last, failures = locust_rate(work / "stats.json")
    cpu = sampler.cpu_between(proc.pid, first, last)
    return {"requests": n, "rps": rate, "failures": failures, "cpu_us_per_req": cpu / n * 1e6 if n else 0.0,
            "cpu_util": cpu / (last - first), "first": first, "last": last}  # fmt: skip


def run(s: Settings) -> dict[str, Any]:
    import statistics

    from bench_ssh import CpuSampler, load_average

    # the work folder holds a run's raw results and profiles: scratch, removed with the run
    with tempfile.TemporaryDirectory(prefix="gateload-bench-portal-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        load_before = load_average()
        rounds = []
        with PortalServerProcess() as server, CpuSampler() as sampler:
            sampler.watch(server.pid)
            profile = write_profile(work, server.url)
            for i in range(s.rounds):
                base = run_side("baseline", s, server.url, profile, work / f"baseline-{i}", sampler)
                gl = run_side("gateload", s, server.url, profile, work / f"gateload-{i}", sampler)
                for side in (base, gl):
                    side["server_cpu_util"] = sampler.cpu_between(server.pid, side["first"], side["last"]) / (
                        side["last"] - side["first"]
                    )
                rounds.append((base, gl))
    ratios = [g["rps"] / b["rps"] for b, g in rounds]
    cpu_ratios = [b["cpu_us_per_req"] / g["cpu_us_per_req"] for b, g in rounds]

    def med(i: int, key: str) -> float:
        return statistics.median(r[i][key] for r in rounds)

    figures = {
        "portal_ratio": statistics.median(ratios),
        "portaluser_rps": med(1, "rps"),
        "fasthttpuser_rps": med(0, "rps"),
        "portaluser_cpu_us_per_req": med(1, "cpu_us_per_req"),
        "fasthttpuser_cpu_us_per_req": med(0, "cpu_us_per_req"),
        "cpu_efficiency_ratio": statistics.median(cpu_ratios),
        "portaluser_client_cpu_util": med(1, "cpu_util"),
        "fasthttpuser_client_cpu_util": med(0, "cpu_util"),
        "server_cpu_util_during_portaluser": med(1, "server_cpu_util"),
        "server_cpu_util_during_fasthttpuser": med(0, "server_cpu_util"),
    }
    failures = sum(b["failures"] + g["failures"] for b, g in rounds)
    notes = (
        f"{s.users} users, {s.processes} process(es), {s.rounds} round(s) of {s.seconds} s per side "
        f"(baseline first); ratios per round {', '.join(f'{r:.3f}' for r in ratios)}; {failures} failed "
        f"requests; load average before {load_before[0]:.2f}, after {load_average()[0]:.2f}. "
        f"Target: portal_ratio >= {TARGET_RATIO}."
    )
    return {"figures": figures, "notes": notes, "target_met": figures["portal_ratio"] >= TARGET_RATIO}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("cmd", nargs="?", choices=["serve"], help="serve: run the trivial portal (internal)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run; nothing appended")
    parser.add_argument("--processes", type=int, default=1, help="Locust processes per side (default 1)")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return serve_main(args)
    from bench_ssh import report

    settings = SMOKE if args.smoke else FULL
    if args.processes != 1:
        from dataclasses import replace

        settings = replace(settings, processes=args.processes)
    return report("portal", run(settings), smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
