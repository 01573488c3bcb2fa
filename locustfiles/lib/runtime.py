"""What every user class shares within one load-generator process: the target, accounts, ids, samples.

- :func:`target_for` loads the profile named by ``--profile`` (or ``GATELOAD_PROFILE``) and its
  credentials file once per process.
- :func:`next_user_id` numbers users within the process (the recorder adds the worker name).
- :meth:`Target.lease` gives a starting user an account no other running user holds: the accounts are
  split between the run's processes (:func:`partition_of`) and leased within one (``accounts.py``).
- :func:`fire` fires one sample with the context keys the recorder reads:
  ``user_id``, ``server``, ``t_intended``, ``error``, ``start_time``.
"""

from __future__ import annotations

import atexit
import csv
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateload.errors import InputError
from gateload.locustfiles.lib.accounts import AccountLeases, Partition
from gateload.locustfiles.lib.errors import classify, safe_error
from gateload.targets.link import link_profile
from gateload.targets.profile import Profile, load_profile

PROFILE_ENV = "GATELOAD_PROFILE"
RUN_INFO = "gateload_run"  # runfolder.RUN_INFO: the run info (with worker slots) the master sends

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Account:
    """One employee's credentials; ``repr`` hides the secrets."""

    username: str
    password: str = field(repr=False)
    totp_secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class Lease:
    """An account held by one running user; ``index`` is its row in the credentials file (0-based)."""

    index: int
    account: Account


@dataclass(frozen=True)
class Target:
    """The loaded profile and the accounts users log on with."""

    profile: Profile
    accounts: tuple[Account, ...]
    leases: AccountLeases = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "leases", AccountLeases(len(self.accounts)))

    def account_for(self, user_id: int) -> Account:
        """The account of user ``user_id`` round-robin (tools and tests; Locust users :meth:`lease`)."""
        return self.accounts[user_id % len(self.accounts)]

    def lease(self, environment: Any) -> Lease:
        """An account for a starting user: the lowest free one of this process's share of the file."""
        shared_before = self.leases.shared
        options = getattr(environment, "parsed_options", None)
        per_account = max(1, int(getattr(options, "users_per_account", 1) or 1))
        index = self.leases.acquire(partition_of(environment), per_account)
        if self.leases.shared > shared_before and shared_before == 0:
            logger.warning(
                "gateload: more users on this process than accounts in its share of %d; users now share "
                "accounts, and a gateway that limits sessions per account will refuse some logons",
                len(self.accounts),
            )
        return Lease(index, self.accounts[index])

    def release(self, lease: Lease | None) -> None:
        """Give a stopping user's account back (None: it held none)."""
        if lease is not None:
            self.leases.release(lease.index)


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
    accounts = tuple(
        Account(r["username"], r["password"], (r.get("totp_secret") or "").strip())
        for r in rows
        if r.get("username")
    )
    if not accounts:
        raise InputError(f"{path}: no row names a username; add accounts (username,password per line)")
    return accounts


def next_user_id() -> int:
    """A user id unique within this process."""
    return next(_user_ids)


_unslotted_warned = False


def partition_of(environment: Any) -> Partition:
    """This process's share of the accounts: its worker slot of the run (local runners own them all).

    The master numbers the workers taking part in a run (``runfolder`` sends the slots with every
    spawn message). A worker that joined after the start has no slot: it falls back to its Locust
    worker index, which may overlap another worker's share (a warning says so).
    """
    from locust.runners import WorkerRunner

    global _unslotted_warned
    runner = getattr(environment, "runner", None)
    if not isinstance(runner, WorkerRunner):
        return Partition()
    info = getattr(environment.parsed_options, RUN_INFO, None) or {}
    slots: dict[str, int] = info.get("slots") or {}
    slot = slots.get(runner.client_id)
    if slot is not None and 0 <= slot < len(slots):
        return Partition(slot, len(slots))
    count = max(len(slots), int(getattr(environment.parsed_options, "expect_workers", 1) or 1), 1)
    if not _unslotted_warned:
        _unslotted_warned = True
        logger.warning(
            "gateload: this worker has no account slot in the run (it joined after the start); "
            "its users may share accounts with another worker's"
        )
    return Partition(max(0, runner.worker_index) % count, count)


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
