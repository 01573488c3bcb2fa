"""The ``gateload`` command: a thin shell that hands each subcommand to the module that owns it.

Each command module exposes ``register(subparsers)``, which adds its parser(s) and sets
``func=<callable(args) -> int>`` as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gateload.errors import InputError

# Modules are imported lazily so that `gateload serve` does not pay for pandas, and nothing here
# imports Locust (it monkey-patches the interpreter; Locust runs as its own process).
COMMAND_MODULES = (
    "targets.reference.cli",  # serve
    "targets.reference.faultcli",  # fault
    "analysis.cli",  # usl, compare, check, report
    "gateload.campaign",  # campaign, demo
    "gateload.probe",  # probe, pin
)

DESCRIPTION = "Load-testing harness for remote-access gateways (homeoffice portal + SSH gateway)."
PASSTHROUGH = ("campaign", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateload", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # Commands that drive Locust pass the options they do not know on to it, unchanged.
    if args.command in PASSTHROUGH:
        from gateload.locustrun import passthrough_args

        args.locust_args = passthrough_args(unknown)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"gateload: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gateload: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
