"""gateload's Locust options: their definitions and their validation into a :class:`RunOptions`.

The options are added to Locust's parser by ``homeoffice.py`` (``init_command_line_parser``) and are
shown in the web UI. Like Locust's own options they can also be set as ``LOCUST_<OPTION>`` environment
variables (``LOCUST_SHAPE=step``, ``LOCUST_STEP_USERS=10,20``) and in a ``locust.conf`` / ``--config``
file (``step-users = 10,20``); the command line wins over the environment, which wins over the file.
``--profile`` is Locust's own option (its web UI has a "Profile" field), so it is not added again:
gateload reads it as the target profile path.

Locust 2.47 prints ``--help`` before it loads the locustfile (locust#2917), so ``locust -f
locustfiles/homeoffice.py --help`` cannot list them; ``python -m gateload.locustfiles.lib.options`` prints
Locust's help with the "gateload options" group.

The definitions and the Locust-free parser live in ``cmdline.py`` (re-exported here); this module checks
the parsed values. Nothing here imports Locust at import time, so the campaign can read a plan with
:func:`plain_parser`, which reads the environment and Locust's config files as Locust does (the run must
follow the plan the campaign checked).
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

from gateload.errors import InputError

# The definitions and the parser are re-exported (``X as X``): callers and tests know them as options.<name>.
from gateload.locustfiles.lib.cmdline import _ARGUMENTS as _ARGUMENTS
from gateload.locustfiles.lib.cmdline import GROUP as GROUP
from gateload.locustfiles.lib.cmdline import LOCUST_CONFIG_FILES as LOCUST_CONFIG_FILES
from gateload.locustfiles.lib.cmdline import OPTION_TYPES
from gateload.locustfiles.lib.cmdline import PROFILE_HELP as PROFILE_HELP
from gateload.locustfiles.lib.cmdline import SECRET_DESTS as SECRET_DESTS
from gateload.locustfiles.lib.cmdline import add_arguments as add_arguments
from gateload.locustfiles.lib.cmdline import env_var as env_var
from gateload.locustfiles.lib.cmdline import plain_parser as plain_parser
from gateload.locustfiles.lib.schedule import Plan, build_plan, parse_timespan
from gateload.targets.profile import Profile, is_loopback, load_profile

PROFILE_ENV = "GATELOAD_PROFILE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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
        from gateload.locustfiles.lib.catalogues import portal_catalogue
        from gateload.locustfiles.lib.remote import check_profile

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
            elif key in OPTION_TYPES:
                kind = OPTION_TYPES[key]
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
