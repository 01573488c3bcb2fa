"""One account per concurrently running user, across processes and workers.

Real gateways limit the sessions of one account (pam_limits ``maxlogins``, ocserv ``max-same-clients``),
so two users logged on with the same account at once measure the limit, not the farm. Accounts are
split between the load-generator processes of a run, and within a process they are leased:

- :class:`Partition`: worker ``slot`` of ``slots`` owns accounts ``slot, slot + slots, ...`` (a stride,
  so every share differs by at most one account, like Locust's spread of users over workers).
- :class:`AccountLeases`: a user takes the lowest free account of its process's share when it starts
  and gives it back when it stops. Only greenlets of one process touch it, so it needs no lock (a
  gevent lock must never be shared with a real thread).
- ``--users-per-account N`` (default 1) lets up to N users hold one account at once, for a gateway
  that allows N sessions per account (ocserv's default ``max-same-clients`` is 2) or a test
  environment with one account and no limit.
- :func:`accounts_needed` / :func:`check_accounts`: the pre-flight check, before any load is sent.

Nothing here imports Locust.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateload.errors import InputError


@dataclass(frozen=True)
class Partition:
    """The share of the accounts owned by one load-generator process: worker ``slot`` of ``slots``."""

    slot: int = 0
    slots: int = 1

    def __post_init__(self) -> None:
        if self.slots < 1 or not 0 <= self.slot < self.slots:
            raise ValueError(f"slot {self.slot} of {self.slots} is not a partition")

    def indices(self, accounts: int) -> range:
        """Indices (0-based, into the credentials file) of the accounts this share owns."""
        return range(self.slot, accounts, self.slots)


def accounts_needed(users: int, workers: int = 1, per_account: int = 1) -> int:
    """Accounts the credentials file must hold for ``users`` concurrent users spread over ``workers``.

    Locust gives each worker at most ``ceil(users / workers)`` users, and the smallest share of
    ``n`` accounts is ``floor(n / workers)``: every worker's users fit when that share, times the
    users one account may take (``per_account``), is big enough.
    """
    w, k = max(1, workers), max(1, per_account)
    return w * math.ceil(math.ceil(max(0, users) / w) / k)


def check_accounts(
    users: int,
    accounts: int,
    workers: int,
    source: str,
    *,
    per_account: int = 1,
    lower: str = "-u",
    add: str = "add accounts",
) -> None:
    """InputError (one line: the problem and the fix) if ``accounts`` cannot give every user its own.

    ``per_account`` is ``--users-per-account``; ``lower`` names the option that sets the peak users,
    ``add`` how to get more accounts.
    """
    if per_account < 1:
        raise InputError(f"--users-per-account is {per_account}; give 1 or more (1: every user its own)")
    needed = accounts_needed(users, workers, per_account)
    if accounts >= needed:
        return
    spread = ""
    if workers > 1:
        spread = f" over {workers} workers ({needed // workers} accounts per worker)"
    if per_account > 1:
        spread += f" at {per_account} per account"
    raise InputError(
        f"{users} users{spread} need {needed} accounts; {source} has {accounts}: {add} or lower {lower}"
    )


class AccountLeases:
    """The accounts of one process held by running users: the lowest free one of the share is leased.

    With ``per_account`` > 1 an account takes up to that many users, the least-held first. When a share
    is exhausted (users added past the pre-flight check, e.g. a worker joining a running test), the
    least-held account is shared beyond that rather than the user failing: :attr:`shared` counts those
    leases so the caller can warn that a per-account session limit may now refuse logons.
    """

    def __init__(self, accounts: int) -> None:
        if accounts < 1:
            raise ValueError("no accounts to lease")
        self.accounts = accounts
        self._holders: dict[int, int] = {}  # account index -> users holding it
        self.shared = 0  # leases that had to share an account

    @property
    def held(self) -> int:
        """Leases currently held."""
        return sum(self._holders.values())

    def holders(self, index: int) -> int:
        """How many running users hold account ``index``."""
        return self._holders.get(index, 0)

    def acquire(self, partition: Partition = Partition(), per_account: int = 1) -> int:
        """Lease the lowest free account of ``partition``: the least-held one, up to ``per_account`` users."""
        owned = partition.indices(self.accounts)
        if not owned:  # more workers than accounts: this share is empty, borrow from the whole file
            owned = range(self.accounts)
        if per_account <= 1:  # the common case: the first account nobody holds
            index = next((i for i in owned if i not in self._holders), None)
        else:
            index = min(owned, key=lambda i: (self._holders.get(i, 0), i))
        if index is None or self._holders.get(index, 0) >= max(1, per_account):
            index = min(owned, key=lambda i: (self._holders.get(i, 0), i))
            self.shared += 1
        self._holders[index] = self._holders.get(index, 0) + 1
        return index

    def release(self, index: int) -> None:
        """Give account ``index`` back (a release without a lease is ignored)."""
        left = self._holders.get(index, 0) - 1
        if left > 0:
            self._holders[index] = left
        else:
            self._holders.pop(index, None)
