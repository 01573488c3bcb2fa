"""The ``gateload`` command: a thin shell that hands each subcommand to the module that owns it.

Each command module exposes ``register(subparsers)``, which adds its parser(s) and sets
``func=<callable(args) -> int>`` as the parser default, and ends its help with the exit codes it
returns (:func:`exit_codes`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from pathlib import Path
from typing import Any

from gateload.errors import InputError

# Modules are imported lazily so that `gateload serve` does not pay for pandas, and nothing here
# imports Locust (it monkey-patches the interpreter; Locust runs as its own process).
COMMAND_MODULES = (
    "gateload.targets.reference.cli",  # serve
    "gateload.targets.reference.faultcli",  # fault
    "gateload.analysis.cli",  # usl, compare, check, report
    "gateload.campaign",  # campaign, demo
    "gateload.probe",  # probe, pin
)

DESCRIPTION = "Load-testing harness for remote-access gateways (homeoffice portal + SSH gateway)."
PASSTHROUGH = ("campaign", "demo")
EPILOG_HEAD = "exit codes:"
# What gateload.cli itself adds to every command: argparse usage errors and InputError exit 2, Ctrl-C 130.
COMMON_CODES = ("130  interrupted (Ctrl-C)",)


class EpilogFormatter(argparse.HelpFormatter):
    """Wraps descriptions as usual but keeps the exit-code epilog one code per line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EPILOG_HEAD):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def exit_codes(*codes: str, common: bool = True) -> dict[str, Any]:
    """``add_parser`` keywords for an epilog listing a command's exit codes ("0  what it means", ...).

    ``common`` appends what every command may return through this module (interrupted: 130).
    """
    lines = [*codes, *(COMMON_CODES if common else ())]
    return {
        "epilog": "\n".join([EPILOG_HEAD, *(f"  {line}" for line in lines)]),
        "formatter_class": EpilogFormatter,
    }


def version() -> str:
    """The installed distribution's version, else pyproject.toml's (a source checkout run in place)."""
    try:
        return importlib.metadata.version("gateload")
    except importlib.metadata.PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"  # neither installed nor a source checkout: still answer, never a traceback


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateload", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"gateload {version()}")
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
