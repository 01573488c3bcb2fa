"""Link proxies in a child process, so their timers never wait for the load generator's GIL.

``serve_in_process(routes, spec)`` starts ``python -m targets.linkproc``, which binds one
:class:`~targets.link.LinkProxy` per route on a free port, prints their addresses as one JSON line and
serves until its stdin closes (the parent stopped it, or died: no orphan is left). On the way out it
prints each proxy's counters as a second JSON line, which the stop function returns.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from targets.link import LinkProxy, LinkSpec, LinkStats, Routes, raise_priority

_REPO = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 10.0


def serve_in_process(
    routes: Routes, spec: LinkSpec, *, listen_host: str = "127.0.0.1", seed: int | None = None
) -> tuple[Routes, Callable[[], dict[str, LinkStats]]]:
    """Start the child; returns the proxies' addresses and a function that stops it (their stats)."""
    argv = [sys.executable, "-m", "targets.linkproc", "--spec", json.dumps(dataclasses.asdict(spec))]
    argv += ["--listen-host", listen_host]
    if seed is not None:
        argv += ["--seed", str(seed)]
    for name, (host, port) in routes.items():
        argv += ["--route", f"{name}={host}:{port}"]
    fd, log_name = tempfile.mkstemp(prefix="gateload-link-", suffix=".log")
    log = Path(log_name)
    with os.fdopen(fd, "wb") as stderr:
        proc = subprocess.Popen(
            argv,
            cwd=_REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(STOP_TIMEOUT_S)
        message = log.read_text(errors="replace")[-2000:]
        log.unlink(missing_ok=True)
        raise RuntimeError(f"link proxy process failed: {message}")
    addresses = {name: (host, int(port)) for name, (host, port) in json.loads(line)["routes"].items()}

    def stop() -> dict[str, LinkStats]:
        try:  # communicate() closes the child's stdin first: its signal to stop
            out, _ = proc.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        finally:
            log.unlink(missing_ok=True)
        stats = json.loads(out.splitlines()[-1]).get("stats", {}) if out.strip() else {}
        return {name: LinkStats(**values) for name, values in stats.items()}

    return addresses, stop


# --- the child --------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m targets.linkproc", description=__doc__)
    p.add_argument("--spec", required=True, help="LinkSpec as JSON")
    p.add_argument("--route", action="append", default=[], metavar="NAME=HOST:PORT")
    p.add_argument("--listen-host", default="127.0.0.1")
    p.add_argument("--seed", type=int, default=None)
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> dict[str, LinkStats]:
    spec = LinkSpec(**json.loads(args.spec))
    proxies: dict[str, LinkProxy] = {}
    for route in args.route:
        name, _, target = route.partition("=")
        host, _, port = target.rpartition(":")
        upstream = (host.strip("[]"), int(port))
        proxies[name] = await LinkProxy(upstream, spec, (args.listen_host, 0), seed=args.seed).start()
    print(json.dumps({"routes": {n: list(p.address) for n, p in proxies.items()}}), flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    # stdin closing (the parent's stop, or its death) ends the child.
    threading.Thread(
        target=lambda: (sys.stdin.buffer.read(), loop.call_soon_threadsafe(done.set)), daemon=True
    ).start()
    await done.wait()
    for proxy in proxies.values():
        await proxy.stop()
    return {name: p.stats for name, p in proxies.items()}


def _wait_for_stdin_eof(loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
    """Stdin closing (the parent's stop, or its death) ends the child."""
    sys.stdin.buffer.read()
    loop.call_soon_threadsafe(done.set)


def main(argv: list[str] | None = None) -> int:
    raise_priority()
    stats = asyncio.run(_serve(_parse(argv)))
    print(json.dumps({"stats": {n: dataclasses.asdict(s) for n, s in stats.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
