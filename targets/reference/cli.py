"""``gateload serve``: run the embedded reference farm of a profile until Ctrl-C or SIGTERM.

Prints exactly one ready line on stdout once the portal and the gateway accept connections. Heavy
modules (pandas, Locust) are never imported on this path, so the farm is up in well under 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

READY_PREFIX = "gateload serve: ready"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``serve`` command."""
    from gateload.cli import exit_codes

    p = subparsers.add_parser(
        "serve",
        help="run the embedded reference gateway farm of a profile",
        description="Run the reference gateway farm (portal, SSH gateway, intranet) on loopback.",
        **exit_codes(
            "0    stopped by Ctrl-C or SIGTERM once serving",
            "2    bad input: a usage error, a bad profile, a busy port, a bind beyond loopback refused",
            "130  interrupted (Ctrl-C) before it was serving",
            common=False,
        ),
    )
    p.add_argument(
        "--profile", required=True, help="a reference profile, e.g. targets/profiles/reference-before.toml"
    )
    p.add_argument("--free-ports", action="store_true", help="bind free ports instead of the profile's ports")
    p.add_argument(
        "--write-profile", metavar="OUT", help="write the effective profile (real ports, absolute paths)"
    )
    p.add_argument(
        "--state-dir", metavar="DIR", help="state folder (host key, credentials); default farm.state_dir"
    )
    p.add_argument("--bind", metavar="ADDR", help="listen address; the explicit way to go beyond loopback")
    p.add_argument("--seed", type=int, help="seed for the service-time sampler (reproducible runs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the profile, serve until a stop signal, exit 0."""
    from gateload.targets.profile import load_profile

    profile = load_profile(args.profile)
    return asyncio.run(_serve(profile, args))


def ready_line(portal_url: str, gateway_host: str, gateway_port: int, servers: int) -> str:
    """The one line ``gateload serve`` prints when it accepts connections (no secrets in it)."""
    return (
        f"{READY_PREFIX} portal={portal_url} gateway={gateway_host}:{gateway_port} "
        f"servers={servers} (Ctrl-C to stop)"
    )


async def _serve(profile: object, args: argparse.Namespace) -> int:
    from gateload.targets.profile import dump_profile, is_loopback
    from gateload.targets.reference.farm import ReferenceFarm, with_free_ports

    if args.free_ports:
        profile = with_free_ports(profile)  # type: ignore[arg-type]
    farm = ReferenceFarm(
        profile,  # type: ignore[arg-type]
        state_dir=Path(args.state_dir) if args.state_dir else None,
        bind=args.bind,
        seed=args.seed,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.bind and not is_loopback(args.bind):
        print(f"gateload serve: warning: listening on {args.bind}, beyond this machine", file=sys.stderr)
    await farm.start()
    try:
        effective = farm.effective_profile
        if args.write_profile:
            out = Path(args.write_profile)
            tmp = out.with_name(f".{out.name}.tmp")
            dump_profile(effective, tmp)
            os.replace(tmp, out)  # readers never see half a file
        print(
            ready_line(farm.portal_url, effective.gateway.host, farm.gateway_port, len(effective.server_ids)),
            flush=True,
        )
        await stop.wait()
    finally:
        await farm.stop()
    print("gateload serve: stopped", file=sys.stderr, flush=True)
    return 0
