"""What every user class shares within one load-generator process: the target, accounts, ids, samples.

- :func:`target_for` loads the profile named by ``--profile`` (or ``GATELOAD_PROFILE``) and its
  credentials file once per process.
- :func:`next_user_id` numbers users within the process (the recorder adds the worker name).
- :func:`fire` fires one sample with the context keys the recorder reads:
  ``user_id``, ``server``, ``t_intended``, ``error``, ``start_time``.
"""

from __future__ import annotations

import atexit
import csv
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateload.errors import InputError
from locustfiles.lib.errors import classify, safe_error
from targets.link import link_profile
from targets.profile import Profile, load_profile

PROFILE_ENV = "GATELOAD_PROFILE"


@dataclass(frozen=True)
class Account:
    """One employee's credentials; ``repr`` hides the secrets."""

    username: str
    password: str = field(repr=False)
    totp_secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class Target:
    """The loaded profile and the accounts users log on with."""

    profile: Profile
    accounts: tuple[Account, ...]

    def account_for(self, user_id: int) -> Account:
        """The account of user ``user_id``: users share accounts round-robin when there are fewer."""
        return self.accounts[user_id % len(self.accounts)]


_targets: dict[str, Target] = {}
_user_ids = itertools.count(1)


def profile_path(environment: Any) -> str:
    """The profile path from ``--profile``, else the ``GATELOAD_PROFILE`` environment variable."""
    options = getattr(environment, "parsed_options", None)
    path = getattr(options, "profile", None) or os.environ.get(PROFILE_ENV)
    if not path:
        raise InputError("no target profile: pass --profile PATH (or set GATELOAD_PROFILE)")
    return str(path)


def target_for(environment: Any) -> Target:
    """The target of this run, loaded once per process."""
    path = str(Path(profile_path(environment)).resolve())
    if path not in _targets:
        profile = load_profile(path)
        # A [link] preset puts emulated homeoffice links (delay, jitter, bandwidth, resets) in front
        # of portal and gateway; started per process, after Locust's --processes fork.
        linked = link_profile(profile)
        atexit.register(linked.stop)
        _targets[path] = Target(linked.profile, load_accounts(profile.credentials_path))
    return _targets[path]


def load_accounts(path: Path) -> tuple[Account, ...]:
    """Read the credentials CSV (header ``username,password[,totp_secret]``); never echoes a value."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the credentials file ({exc.strerror})") from None
    if not rows or not {"username", "password"} <= set(rows[0]):
        raise InputError(f"{path}: needs a header 'username,password[,totp_secret]' and at least one row")
    return tuple(
        Account(r["username"], r["password"], (r.get("totp_secret") or "").strip())
        for r in rows
        if r.get("username")
    )


def next_user_id() -> int:
    """A user id unique within this process."""
    return next(_user_ids)


def sample_context(
    user_id: int,
    *,
    server: str | None = None,
    t_intended: float | None = None,
    error: str | None = None,
    start_time: float | None = None,
) -> dict[str, Any]:
    """The request context the recorder reads."""
    return {
        "user_id": user_id,
        "server": server,
        "t_intended": t_intended,
        "error": error,
        "start_time": start_time,
    }


def fire(
    environment: Any,
    *,
    request_type: str,
    name: str,
    start_time: float,
    response_time: float,
    user_id: int,
    response_length: int = 0,
    exception: BaseException | None = None,
    server: str | None = None,
    t_intended: float | None = None,
) -> None:
    """Fire one sample (from the greenlet, never the loop thread); the exception is made safe to log."""
    error = classify(exception)
    environment.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=response_time,
        response_length=response_length,
        exception=safe_error(exception),
        context=sample_context(
            user_id, server=server, t_intended=t_intended, error=error, start_time=start_time
        ),
        start_time=start_time,
        url=None,
        response=None,
    )
