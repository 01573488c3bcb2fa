"""gateload's Locust options: their definitions and their validation into a :class:`RunOptions`.

The options are added to Locust's parser by ``homeoffice.py`` (``init_command_line_parser``) and are
shown in the web UI. Like Locust's own options they can also be set as ``LOCUST_<OPTION>`` environment
variables (``LOCUST_SHAPE=step``, ``LOCUST_STEP_USERS=10,20``) and in a ``locust.conf`` / ``--config``
file (``step-users = 10,20``); the command line wins over the environment, which wins over the file.
``--profile`` is Locust's own option (its web UI has a "Profile" field), so it is not added again:
gateload reads it as the target profile path.

Locust 2.47 prints ``--help`` before it loads the locustfile (locust#2917), so ``locust -f
locustfiles/homeoffice.py --help`` cannot list them; ``python -m locustfiles.lib.options`` prints
Locust's help with the "gateload options" group.

Nothing here imports Locust, so the campaign can read a plan with :func:`plain_parser`, which reads the
environment and Locust's config files as Locust does (the run must follow the plan the campaign checked).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import configargparse  # Locust's own option parser (a Locust dependency); importing it does not import Locust

from gateload.errors import InputError
from locustfiles.lib.schedule import SHAPES, Plan, build_plan, parse_timespan
from targets.profile import Profile, is_loopback, load_profile

PROFILE_ENV = "GATELOAD_PROFILE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

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

#: dest -> type, for coercing web UI form values (which arrive as strings).
_TYPES = {a[0][2:].replace("-", "_"): a[1].get("type", str) for a in _ARGUMENTS} | {"allow_remote": bool}

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


@dataclass(frozen=True)
class RunOptions:
    """gateload's options, checked."""

    plan: Plan
    profile: Profile | None
    results_dir: Path
    label: str
    run_id: str  # "" = generate one per run
    users_per_account: int = 1  # --users-per-account (accounts.py)

    def run_dir(self, run_id: str) -> Path:
        return self.results_dir / self.label / run_id


def resolve(options: Any, *, check_existing: bool = True) -> RunOptions:
    """Check parsed options (Locust's namespace); InputError with a one-line message if one is wrong."""
    plan = build_plan(options)
    profile = load_run_profile(options)
    if profile is not None:
        check_loopback(profile, bool(getattr(options, "allow_remote", False)))
        # an unknown [gateway] protocol, or a mix it cannot serve, is a one-line error before any user starts
        from locustfiles.lib.catalogues import portal_catalogue
        from locustfiles.lib.remote import check_profile

        check_profile(profile, portal_catalogue(profile).activities)
    label = _name("--label", getattr(options, "label", "run") or "run")
    run_id = getattr(options, "run_id", "") or ""
    if run_id:
        _name("--run-id", run_id)
    results_dir = Path(getattr(options, "results_dir", "results") or "results")
    per_account = getattr(options, "users_per_account", 1)
    if not isinstance(per_account, int) or per_account < 1:
        raise InputError(f"--users-per-account is {per_account!r}; give 1 or more (1: every user its own)")
    resolved = RunOptions(plan, profile, results_dir, label, run_id, per_account)
    _check_writable(results_dir)
    if check_existing and run_id and has_results(resolved.run_dir(run_id)):
        raise InputError(
            f"{resolved.run_dir(run_id)} already holds a run; pass another --run-id (or none) or move it away"
        )
    return resolved


def profile_path(options: Any) -> str | None:
    """The target profile path: Locust's --profile, else GATELOAD_PROFILE, else None."""
    return getattr(options, "profile", None) or os.environ.get(PROFILE_ENV) or None


def load_run_profile(options: Any) -> Profile | None:
    """The target profile of the run (None when none is given); InputError if it does not load."""
    path = profile_path(options)
    return load_profile(path) if path else None


def check_loopback(profile: Profile, allow_remote: bool) -> None:
    """Refuse a target outside loopback unless the profile or --allow-remote says so."""
    remote = [h for h in profile.hosts() if not is_loopback(h)]
    if remote and not (allow_remote or profile.target.allow_non_loopback):
        raise InputError(
            f"{profile.path}: target {', '.join(remote)} is not on loopback; set "
            "target.allow_non_loopback = true in the profile or pass --allow-remote if you mean it"
        )


def has_results(run_dir: Path) -> bool:
    """True if a run folder already holds something (it is never overwritten)."""
    return run_dir.is_dir() and any(run_dir.iterdir())


def new_run_id(now: float | None = None) -> str:
    """A fresh run id: YYYYmmdd-HHMMSS-<4 hex>."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(2)}"


def unique_run_dir(resolved: RunOptions, run_id: str) -> tuple[str, Path]:
    """``run_id`` and its folder, suffixed -2, -3... if it already holds a run (repeated web UI starts)."""
    candidate, n = run_id, 1
    while has_results(resolved.run_dir(candidate)):
        n += 1
        candidate = f"{run_id}-{n}"
    return candidate, resolved.run_dir(candidate)


def with_form(options: Any, form: Mapping[str, str]) -> argparse.Namespace:
    """A copy of ``options`` with the values of a web UI start form applied (as Locust will apply them)."""
    merged = argparse.Namespace(**vars(options))
    try:
        for key, value in form.items():
            if key == "user_count":
                merged.num_users = int(value)
            elif key == "spawn_rate":
                merged.spawn_rate = float(value)
            elif key == "run_time":
                merged.run_time = parse_timespan(value) if value else None
            elif key == "profile":
                merged.profile = value or None
            elif key in _TYPES:
                kind = _TYPES[key]
                setattr(merged, key, value == "true" if kind is bool else kind(value))
    except ValueError:
        flag = {"user_count": "Number of users", "spawn_rate": "Ramp up"}.get(
            key, "--" + key.replace("_", "-")
        )
        raise InputError(f"{flag} is {value!r}; give a number") from None
    return merged


def _name(flag: str, value: str) -> str:
    if not _NAME.match(value):
        raise InputError(
            f"{flag} is {value!r}; use letters, digits, '.', '_' and '-' only (it names a folder)"
        )
    return value


def _check_writable(results_dir: Path) -> None:
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"--results-dir {results_dir}: cannot create it ({exc.strerror}); pass another"
        ) from None
    if not os.access(results_dir, os.W_OK):
        raise InputError(f"--results-dir {results_dir}: not writable; pass another")


def locust_help() -> str:
    """Locust's --help with gateload's options (``locust -f ... --help`` cannot show them: locust#2917)."""
    from locust.argument_parser import get_parser

    parser = get_parser(default_config_files=())
    add_arguments(parser)
    return parser.format_help()


if __name__ == "__main__":
    print(locust_help(), end="")
