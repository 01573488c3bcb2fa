"""``HomeofficeUser``: one employee's whole homeoffice session per task.

Portal logon (with MFA) -> app list -> launch ticket -> SSH connect with the ticket -> PTY shell ready
(this span is the ``SESSION logon`` sample, as VDI tools report logon time) -> a workday mix of
activities with think time -> ``exit`` and ``POST /logout`` (the whole span is ``SESSION session``).

Failures are recorded with their error class and the user recovers as a person would: a failed
logon is retried after a growing pause, a dropped connection is reconnected with a new ticket
(``SSH reconnect``), and a session that cannot go on is ended. Target failures never escape into
Locust's ``user_error``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import gevent
from locust import task

from locustfiles.lib.arrivals import next_arrival
from locustfiles.lib.errors import OperationError, RecordedFailure
from locustfiles.lib.gateway import SSH, SSHUser, choose_activity, idle
from locustfiles.lib.portal import PortalClient
from locustfiles.lib.runtime import fire
from locustfiles.lib.sshbridge import Timed

SESSION = "SESSION"


class HomeofficeUser(SSHUser):
    """One homeoffice employee: each task is a whole session, from portal logon to logoff."""

    abstract = False

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.sessions_started = 0

    @task
    def session(self) -> None:
        """One session: logon, activities, logoff; a failed logon waits a growing pause, then returns."""
        t_intended = next_arrival(self.environment)
        if t_intended is not None:
            gevent.sleep(max(0.0, t_intended - time.time()))
        start, t0 = time.time(), time.perf_counter()
        portal = PortalClient(self, self.target, self.target.account_for(self.user_id), self.user_id)
        assert self.ssh is not None
        self.ssh.server = None  # a new session has no gateway backend yet: a portal failure is the portal's
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
        """Portal logon, app list, ticket, SSH connect and shell; the first failure or None."""
        try:
            portal.logon()
            portal.apps()
            ticket = portal.launch()
        except RecordedFailure as failure:
            return failure
        assert self.ssh is not None
        return self.ssh.logon(ticket.username, ticket.secret)

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
        ssh = self.ssh
        assert ssh is not None
        w = self.target.profile.workload
        for i in range(activities):
            if i and not idle(self, self.rng.uniform(w.think_min_s, w.think_max_s)):
                return None  # asked to stop gracefully: log off now
            if not ssh.usable:
                failure = self._reconnect(portal)
                if failure is not None:
                    return failure
            activity = choose_activity(self.rng, w.mix)
            document = self.rng.choice(w.documents)
            if activity == "document":
                with contextlib.suppress(RecordedFailure):  # recorded; the employee goes on
                    portal.document(document)
            else:
                ssh.run_activity(activity, document)
        return None

    def _reconnect(self, portal: PortalClient) -> OperationError | None:
        """After a drop: a new ticket, connect, shell; one ``SSH reconnect`` sample."""
        ssh = self.ssh
        assert ssh is not None
        ssh.record_idle_drop()
        start, t0 = time.time(), time.perf_counter()
        try:
            ticket = portal.launch()
        except RecordedFailure as exc:
            failure: OperationError | None = exc
        else:
            failure = ssh.logon(ticket.username, ticket.secret, record=False)
        outcome = Timed(start, (time.perf_counter() - t0) * 1000.0, None, failure)
        ssh._fire(SSH, "reconnect", outcome)
        return failure

    def _logoff(self, portal: PortalClient) -> None:
        assert self.ssh is not None
        self.ssh.close()
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
        assert self.ssh is not None
        fire(
            self.environment,
            request_type=SESSION,
            name=name,
            start_time=start,
            response_time=(time.perf_counter() - t0) * 1000.0,
            user_id=self.user_id,
            exception=failure,
            server=self.ssh.server or portal.server,
            t_intended=t_intended,
        )
