"""``HomeofficeUser``: one employee's whole homeoffice session per task.

Portal logon (with MFA) -> app list -> launch ticket -> the remote session logs on with the ticket
(SSH: connect, PTY shell ready; this span is the ``SESSION logon`` sample, as VDI tools report logon
time) -> a workday mix of activities with think time -> the session closes and ``POST /logout`` (the
whole span is ``SESSION session``).

The remote session is the protocol the profile's ``[gateway] protocol`` names
(:mod:`gateload.locustfiles.lib.remote`); the activities drawn are those its catalogue and the portal serve.

Failures are recorded with their error class and the user recovers as a person would: a failed
logon is retried after a growing pause, a dropped connection is reconnected with a new ticket
(the protocol's ``reconnect``, e.g. ``SSH reconnect``), and a session that cannot go on is ended.
Target failures never escape into Locust's ``user_error``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import gevent
from locust import task

from gateload.analysis.catalogue import Catalogue, Operation
from gateload.locustfiles.lib import remote
from gateload.locustfiles.lib.arrivals import next_arrival
from gateload.locustfiles.lib.catalogues import portal_catalogue
from gateload.locustfiles.lib.errors import ERROR_CLASSES, OperationError, RecordedFailure
from gateload.locustfiles.lib.portal import PortalClient
from gateload.locustfiles.lib.remoteuser import RemoteUser, choose_activity, idle
from gateload.locustfiles.lib.runtime import fire
from gateload.targets.profile import ACTIVITIES, Profile

SESSION = "SESSION"
# The session's own rows span the portal and the remote protocol, so any error class can end them.
SESSION_CATALOGUE = Catalogue(
    ("session",),
    (
        Operation(
            SESSION,
            "logon",
            "portal start to remote session ready (logon time, as VDI tools report it)",
            errors=ERROR_CLASSES,
            roles=("logon",),
            aggregate=True,
        ),
        Operation(
            SESSION,
            "session",
            "portal start to logoff; error: what ended the session early",
            errors=ERROR_CLASSES,
            roles=("session",),
            aggregate=True,
        ),
    ),
)


class HomeofficeUser(RemoteUser):
    """One homeoffice employee: each task is a whole session, from portal logon to logoff."""

    abstract = False

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.sessions_started = 0
        # the profile's mix, among the activities the portal and this protocol serve; in the profile's
        # order, so a seeded random stream draws the same activities as before the catalogue
        served = self.operations(self.target.profile).activities
        self.activities = tuple(a for a in ACTIVITIES if a in served)

    @classmethod
    def operations(cls, profile: Profile) -> Catalogue:
        """The session's own rows, the portal's and the profile's remote protocol's operations."""
        return Catalogue.merge(
            [SESSION_CATALOGUE, portal_catalogue(profile), remote.for_profile(profile).catalogue]
        )

    @task
    def session(self) -> None:
        """One session: logon, activities, logoff; a failed logon waits a growing pause, then returns."""
        t_intended = next_arrival(self.environment)
        if t_intended is not None:
            gevent.sleep(max(0.0, t_intended - time.time()))
        start, t0 = time.time(), time.perf_counter()
        portal = PortalClient(self, self.target, self.account, self.user_id)
        assert self.remote is not None
        self.remote.server = (
            None  # a new session has no gateway backend yet: a portal failure is the portal's
        )
        try:
            failure = self._logon(portal)
            self._fire_session("logon", start, t0, failure, t_intended, portal)
            if failure is None:
                self.backoff.reset()
                ended_by = self._workday(portal, self._session_length(open_model=t_intended is not None))
                self._logoff(portal)
                self._fire_session("session", start, t0, ended_by, t_intended, portal)
        finally:
            portal.close()
        if failure is not None:
            idle(self, self.backoff.next_delay())

    # --- steps ------------------------------------------------------------------------------------

    def _logon(self, portal: PortalClient) -> OperationError | None:
        """Portal logon, app list, ticket, remote session logon; the first failure or None."""
        try:
            portal.logon()
            portal.apps()
            ticket = portal.launch()
        except RecordedFailure as failure:
            return failure
        assert self.remote is not None
        return self.remote.logon(ticket.username, ticket.secret)

    def _session_length(self, open_model: bool) -> int:
        """Activities in this session; a closed-model user's first session has a random length.

        Users of a step start together in its ramp. With sessions of equal length they would also
        end together, so logons would come only in storms and a step's logon time would rest on one
        storm. A first length drawn uniformly from 1..N (a session's remaining life on a farm that has
        run a while) spreads the logons that follow. An open model schedules its own arrivals.
        """
        n = self.target.profile.workload.activities_per_session
        self.sessions_started += 1
        if open_model or self.sessions_started > 1:
            return n
        return self.rng.randint(1, n)

    def _workday(self, portal: PortalClient, activities: int) -> OperationError | None:
        """``activities`` activities of the session; the failure that ended it early, or None."""
        session = self.remote
        assert session is not None
        w = self.target.profile.workload
        for i in range(activities):
            if i and not idle(self, self.rng.uniform(w.think_min_s, w.think_max_s)):
                return None  # asked to stop gracefully: log off now
            if not session.usable:
                failure = self._reconnect(portal)
                if failure is not None:
                    return failure
            activity = choose_activity(self.rng, w.mix, self.activities)
            document = self.rng.choice(w.documents)
            if activity == "document":
                with contextlib.suppress(RecordedFailure):  # recorded; the employee goes on
                    portal.document(document)
            else:
                session.run_activity(activity, document)
        return None

    def _reconnect(self, portal: PortalClient) -> OperationError | None:
        """After a drop: a new ticket and a new logon; one ``reconnect`` sample of the protocol."""
        session = self.remote
        assert session is not None
        session.record_idle_drop()
        start, t0 = time.time(), time.perf_counter()
        try:
            ticket = portal.launch()
        except RecordedFailure as exc:
            failure: OperationError | None = exc
        else:
            failure = session.logon(ticket.username, ticket.secret, record=False)
        session.record_reconnect(start, (time.perf_counter() - t0) * 1000.0, failure)
        return failure

    def _logoff(self, portal: PortalClient) -> None:
        assert self.remote is not None
        self.remote.close()
        with contextlib.suppress(RecordedFailure):  # recorded; the session's work is done anyway
            portal.logout()

    def _fire_session(
        self,
        name: str,
        start: float,
        t0: float,
        failure: OperationError | None,
        t_intended: float | None,
        portal: PortalClient,
    ) -> None:
        assert self.remote is not None
        fire(
            self.environment,
            request_type=SESSION,
            name=name,
            start_time=start,
            response_time=(time.perf_counter() - t0) * 1000.0,
            user_id=self.user_id,
            exception=failure,
            server=self.remote.server or portal.server,
            t_intended=t_intended,
        )
