"""The link proxies' child process (``python -m gateload.targets.linkproc``), so their timers never wait for
the load generator's GIL.

The parent side is ``gateload.targets.link.serve_in_process``: it starts this module, which binds one
:class:`~gateload.targets.link.LinkProxy` per route on a free port, prints their addresses as one JSON line
and serves until its stdin closes (the parent stopped it, or died: no orphan is left). On the way out it
prints each proxy's counters as a second JSON line, which the stop function returns. Only this module
imports ``gateload.targets.link``, never the other way round (the parent names the child by its module path).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import threading

from gateload.targets.link import LinkProxy, LinkSpec, LinkStats, raise_priority

# --- the child --------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gateload.targets.linkproc", description=__doc__)
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
    threading.Thread(target=_wait_for_stdin_eof, args=(loop, done), daemon=True).start()
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
