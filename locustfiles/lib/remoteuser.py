"""The users that hold one remote session through the gateway, whatever its protocol.

:class:`RemoteUser` (target, random stream, backoff, the account it holds, its session) is the base of
``GatewayUser`` (here: the gateway alone, static credentials) and ``HomeofficeUser`` (session.py: the
portal first). The session comes from the profile's ``[gateway] protocol``
(:mod:`gateload.locustfiles.lib.remote`), so no user here knows SSH; the protocol modules (SSH:
``gateway.py``) know nothing of users.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import gevent
from locust import User, task
from locust.user.task import LOCUST_STATE_STOPPING

from gateload.analysis.catalogue import Catalogue
from gateload.locustfiles.lib import remote
from gateload.locustfiles.lib.runtime import Account, Lease, next_user_id, target_for
from gateload.targets.profile import ACTIVITIES, Profile


def choose_activity(rng: random.Random, mix: dict[str, float], allowed: Sequence[str] = ACTIVITIES) -> str:
    """One activity drawn by the profile's weights, among ``allowed``."""
    names = [a for a in allowed if mix.get(a, 0.0) > 0]
    if not names:
        raise ValueError(f"workload.mix gives no weight to any of {', '.join(allowed)}")
    return rng.choices(names, weights=[mix[a] for a in names])[0]


class Backoff:
    """Growing, jittered pauses after consecutive failures (a person retrying), capped."""

    def __init__(self, rng: random.Random, base_s: float = 1.0, cap_s: float = 30.0) -> None:
        self.rng, self.base_s, self.cap_s, self.failures = rng, base_s, cap_s, 0

    def next_delay(self) -> float:
        self.failures += 1
        return min(self.cap_s, self.base_s * 2 ** (self.failures - 1)) * self.rng.uniform(0.5, 1.5)

    def reset(self) -> None:
        self.failures = 0


def idle(user: User, seconds: float) -> bool:
    """Sleep up to ``seconds``; False (early) when the user is asked to stop gracefully."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if user._state == LOCUST_STATE_STOPPING:
            return False
        gevent.sleep(min(left, 0.5))
    return user._state != LOCUST_STATE_STOPPING


class RemoteUser(User):
    """Base of the users that hold one gateway session: target, random stream, backoff, ``remote``.

    The session comes from :meth:`new_session`: the profile's ``[gateway] protocol`` (SSH by default,
    :mod:`gateload.locustfiles.lib.remote`); :meth:`operations` is the catalogue of what the user records
    (meta.json).
    """

    abstract = True

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.target = target_for(environment)
        self.rng = random.Random()
        self.backoff = Backoff(self.rng)
        self.user_id = 0
        self.remote: remote.RemoteSession | None = None
        self.lease: Lease | None = None  # this user's own account while it runs (accounts.py)

    @property
    def account(self) -> Account:
        """The account this running user holds (no other running user of the run holds it)."""
        assert self.lease is not None, "on_start() leases the account"
        return self.lease.account

    def on_start(self) -> None:
        self.user_id = next_user_id()
        self.lease = self.target.lease(self.environment)
        self.remote = self.new_session()

    def on_stop(self) -> None:
        # Killed (test stopped): drop the connection without waiting and without firing samples.
        if self.remote is not None:
            self.remote.abort()
        # The abort reaches the loop before any later connect, so the next holder never overlaps it.
        lease, self.lease = self.lease, None
        self.target.release(lease)

    def new_session(self) -> remote.RemoteSession:
        """This user's session of the profile's protocol (not yet logged on)."""
        return remote.for_profile(self.target.profile).factory(self.environment, self.target, self.user_id)

    @classmethod
    def operations(cls, profile: Profile) -> Catalogue:
        """The operations this user class records with ``profile``: its protocol's (meta.json)."""
        return remote.for_profile(profile).catalogue


class GatewayUser(RemoteUser):
    """Gateway-only load with static credentials (account password, or ``credentials.ssh_key``).

    Each task is one activity of the mix the protocol serves (SSH by default) on a kept-open connection,
    then think time; a drop is recorded and followed by a ``reconnect``.
    """

    abstract = False

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self._logged_on_once = False

    def wait_time(self) -> float:
        w = self.target.profile.workload
        return self.rng.uniform(w.think_min_s, w.think_max_s)

    @task
    def work(self) -> None:
        session = self.remote
        assert session is not None
        if not session.usable and not self._connect(session):
            idle(self, self.backoff.next_delay())
            return
        self.backoff.reset()
        w = self.target.profile.workload
        session.run_activity(
            choose_activity(self.rng, w.mix, session.activities), self.rng.choice(w.documents)
        )

    def _connect(self, session: remote.RemoteSession) -> bool:
        account = self.account
        password = None if self.target.profile.credentials.ssh_key else account.password
        if not self._logged_on_once:
            ok = session.logon(account.username, password) is None
            self._logged_on_once = ok
            return ok
        session.record_idle_drop()
        start, t0 = time.time(), time.perf_counter()
        error = session.logon(account.username, password, record=False)
        session.record_reconnect(start, (time.perf_counter() - t0) * 1000.0, error)
        return error is None
