"""``gateload fault``: switch faults of a running reference farm through its admin endpoint.

    gateload fault --profile effective.toml inject stall --server old-02 --duration 10
    gateload fault --profile effective.toml inject auth_fail --percent 30 --duration 60 --start 5
    gateload fault --profile effective.toml list
    gateload fault --profile effective.toml clear

``--profile`` is the *effective* profile that ``gateload serve --write-profile`` wrote: it names the
admin port and the state folder holding the token (or set ``GATELOAD_ADMIN_TOKEN``). The token is
never printed. Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import json

from gateload.errors import InputError

KINDS = ("reset", "stall", "auth_fail", "http_503", "down", "slow_sftp")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``fault`` command."""
    from gateload.cli import exit_codes

    codes = exit_codes(
        "0    done (injected, listed or cleared)",
        "2    bad input: a usage error, a bad profile, the farm refused the fault or is not reachable",
    )
    p = subparsers.add_parser(
        "fault",
        help="inject, list or clear faults of a running reference farm",
        description="Talk to the loopback admin endpoint of a farm started by gateload serve.",
        **codes,
    )
    p.add_argument("--profile", required=True, help="the effective profile written by serve --write-profile")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    inject = sub.add_parser("inject", help="start a fault (it ends by itself after --duration)", **codes)
    inject.add_argument("kind", choices=KINDS)
    inject.add_argument("--duration", type=float, required=True, metavar="S", help="seconds it lasts")
    inject.add_argument("--server", default="*", help="a server id such as old-02, or * (default)")
    inject.add_argument("--start", type=float, default=0.0, metavar="S", help="seconds from now")
    inject.add_argument("--percent", type=float, help="auth_fail, http_503: share hit (default 100)")
    inject.add_argument("--factor", type=float, help="slow_sftp: times slower (default 10)")
    inject.add_argument("--every", type=float, metavar="S", help="reset: again every S seconds")
    sub.add_parser("list", help="active, scheduled and ended faults, and the log (JSON)", **codes)
    sub.add_parser("clear", help="end every fault now", **codes)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Do the action; one-line errors (exit 2) when the profile or the farm says no."""
    from gateload.targets.profile import load_profile
    from gateload.targets.reference.faults import FaultClient

    try:
        client = FaultClient.for_profile(load_profile(args.profile))
        if args.action == "inject":
            params = {"server": args.server, "start_s": args.start}
            for key, value in (("percent", args.percent), ("factor", args.factor), ("every_s", args.every)):
                if value is not None:
                    params[key] = value
            fault = client.inject(args.kind, args.duration, **params)
            print(f"fault {fault['id']}: {fault['kind']} on {fault['server']} ({fault['state']})")
        elif args.action == "list":
            print(json.dumps(client.state(), indent=2))
        else:
            print(f"ended {client.clear()} fault(s)")
    except ValueError as exc:
        raise InputError(f"{args.profile}: {exc}") from None
    except OSError as exc:
        raise InputError(
            f"{args.profile}: cannot reach the admin endpoint ({exc}); is the farm running?"
        ) from None
    return 0
