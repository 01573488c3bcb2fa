"""gateload's command-line options: their definitions, and a parser for Locust command lines without Locust.

The options are added to Locust's parser by ``homeoffice.py`` (``init_command_line_parser``, through
:func:`add_arguments`) and are shown in the web UI. Like Locust's own options they can also be set as
``LOCUST_<OPTION>`` environment variables and in a ``locust.conf`` / ``--config`` file; see ``options.py``,
which checks the parsed values into a ``RunOptions``.

This module sits below both ``schedule.py`` (which reads a plan from a command line with
:func:`plain_parser`) and ``options.py`` (which validates), and imports neither; nothing here imports Locust.
"""

from __future__ import annotations

import argparse
from typing import Any

import configargparse  # Locust's own option parser (a Locust dependency); importing it does not import Locust

#: The load shapes ``--shape`` offers; ``schedule.build_plan`` has one builder for each.
SHAPES = ("none", "step", "workday", "arrivals")

# (flags, argparse keywords); every one is shown in the web UI.
_ARGUMENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--shape", {"default": "none", "choices": list(SHAPES),
                 "help": "gateload load shape: none (plain -u/-r/-t), step, workday or arrivals"}),
    ("--step-users", {"default": "", "metavar": "N,N,...",
                      "help": "step shape: users of each step, e.g. 10,20,40,80"}),
    ("--step-start", {"type": int, "default": 0,
                      "help": "step shape: users of the first step (with --step-add/--step-count)"}),
    ("--step-add", {"type": int, "default": 0, "help": "step shape: users added per step"}),
    ("--step-count", {"type": int, "default": 0, "help": "step shape: number of steps"}),
    ("--step-hold", {"type": float, "default": 30.0, "metavar": "S",
                     "help": "step shape: seconds each step is held once ramped (steady state)"}),
    ("--step-ramp", {"type": float, "default": 0.0, "metavar": "S",
                     "help": "step shape: seconds to ramp to each step (0: ramp at -r users/s)"}),
    ("--workday-minutes", {"type": float, "default": 9.0, "metavar": "MIN",
                           "help": "workday shape: length of the compressed 08:00-17:00 day, peak -u users"}),
    ("--arrival-rate", {"type": float, "default": 0.0, "metavar": "PER_S",
                        "help": "arrivals shape: sessions started per second, over a pool of -u users"}),
    ("--results-dir", {"default": "results", "metavar": "DIR", "help": "gateload: where run folders go"}),
    ("--label", {"default": "run", "help": "gateload: run label, e.g. before or after"}),
    ("--run-id", {"default": "",
                  "help": "gateload: run id (default YYYYmmdd-HHMMSS-xxxx, new for every start)"}),
    ("--users-per-account", {"type": int, "default": 1, "metavar": "N",
                             "help": "gateload: running users that may hold one account at once (1: each "
                                     "its own; more only if the gateway allows N sessions per account)"}),
    ("--allow-remote", {"action": "store_true", "default": False,
                        "help": "gateload: allow a target outside loopback (the profile can allow it too)"}),
)  # fmt: skip

#: dest -> type, for coercing web UI form values (which arrive as strings; ``options.with_form``).
OPTION_TYPES = {a[0][2:].replace("-", "_"): a[1].get("type", str) for a in _ARGUMENTS} | {
    "allow_remote": bool
}

#: Locust options marked ``is_secret`` (masked in meta.json); filled when the parser is built.
SECRET_DESTS: set[str] = set()

PROFILE_HELP = (
    "gateload: target profile TOML, e.g. targets/profiles/reference-before.toml (env GATELOAD_PROFILE)"
)


#: Title of the --help group gateload's options are listed in.
GROUP = "gateload options"


def env_var(flag: str) -> str:
    """An option's environment variable, named as Locust names its own: --step-users -> LOCUST_STEP_USERS."""
    return "LOCUST_" + flag.removeprefix("--").upper().replace("-", "_")


def add_arguments(parser: Any) -> None:
    """Add gateload's options to Locust's parser (shown in the web UI), or to a plain argparse parser."""
    is_locust = hasattr(parser, "args_included_in_web_ui")
    takes_env = isinstance(parser, configargparse.ArgumentParser)
    # the group's add_argument is argparse's, which knows configargparse's env_var but not Locust's web UI
    # keywords: those are set on the action below, as LocustArgumentParser.add_argument sets them
    target = parser.add_argument_group(GROUP) if is_locust else parser
    for flag, kwargs in _ARGUMENTS:
        action = target.add_argument(flag, **kwargs, **({"env_var": env_var(flag)} if takes_env else {}))
        if is_locust:
            action.include_in_web_ui = True
            action.is_secret = action.is_required = action.is_multiple = False
    SECRET_DESTS.update(getattr(parser, "secret_args_included_in_web_ui", {}) or {})
    profile = next((a for a in parser._actions if a.dest == "profile"), None)
    if profile is None:
        parser.add_argument("--profile", default=None, help=PROFILE_HELP)
    else:  # Locust's own --profile ("group the test runs"): we give it its gateload meaning
        profile.help = PROFILE_HELP


#: Locust's default config files (its DEFAULT_CONFIG_FILES), relative to the working folder.
LOCUST_CONFIG_FILES = ("~/.locust.conf", "locust.conf", "pyproject.toml")


class _LocustConfigFileParser(configargparse.ConfigFileParser):
    """Locust's config syntax (its LocustConfigParser): [tool.locust] of a .toml file, else key = value."""

    def parse(self, stream: Any) -> Any:
        if stream.name.endswith(".toml"):
            return configargparse.TomlConfigParser(["tool.locust"]).parse(stream)
        return configargparse.DefaultConfigFileParser().parse(stream)


def plain_parser(config_files: tuple[str, ...] = LOCUST_CONFIG_FILES) -> argparse.ArgumentParser:
    """A parser for Locust command lines that knows -u/-r/-t and gateload's options (no Locust).

    Like Locust's it reads LOCUST_* environment variables, ``--config`` and the default config files; it
    ignores the config keys of Locust's other options, which it does not know.
    """
    p = configargparse.ArgumentParser(
        add_help=False,
        default_config_files=list(config_files),
        config_file_parser_class=_LocustConfigFileParser,
        ignore_unknown_config_file_keys=True,
    )
    p.add_argument("--config", is_config_file_arg=True)
    p.add_argument("-u", "--users", dest="num_users", type=int, default=None, env_var="LOCUST_USERS")
    p.add_argument(
        "-r", "--spawn-rate", dest="spawn_rate", type=float, default=None, env_var="LOCUST_SPAWN_RATE"
    )
    p.add_argument("-t", "--run-time", dest="run_time", default=None, env_var="LOCUST_RUN_TIME")
    add_arguments(p)
    return p
