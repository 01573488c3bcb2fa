"""A gateway that stops answering: the keepalive notices, the drop is recorded, the user reconnects."""

from __future__ import annotations

import os
import signal
import time

from users_support import FAST, environment, wait_until

from gateload.locustfiles.lib.session import HomeofficeUser

THINK_S = 4.0  # the user is idle this long between activities
KEEPALIVE_S = 0.3  # asyncssh gives up after 4 unanswered keepalives: ~1.2 s


class FullSessionUser(HomeofficeUser):
    """Every session full length (no random first one), so the user is mid-session after its first exec."""

    abstract = False

    def _session_length(self, open_model: bool) -> int:
        return self.target.profile.workload.activities_per_session


def test_keepalive_failure_is_a_drop_and_the_user_reconnects(reference_farm, reference_farm_process) -> None:
    settings = {
        **FAST,
        "gateway__keepalive_s": KEEPALIVE_S,
        "workload__mix": {"exec": 1.0},
        "workload__activities_per_session": 3,
        "workload__think_min_s": THINK_S,
        "workload__think_max_s": THINK_S + 0.5,
    }
    path = reference_farm("reference-before", **settings)
    farm = reference_farm_process(path)
    run = environment(path, FullSessionUser)
    runner = run.env.create_local_runner()
    runner.start(1, spawn_rate=1)
    try:
        assert wait_until(lambda: run.count("SSH", "exec") == 1, 20)
        # The user now thinks for >= 4 s. Freeze the farm: no keepalive answers, no close either.
        os.kill(farm.pid, signal.SIGSTOP)
        try:
            time.sleep(2.5)  # (gevent-patched) keepalives go unanswered; the user is still thinking
        finally:
            os.kill(farm.pid, signal.SIGCONT)
        assert wait_until(lambda: run.count("SSH", "reconnect") >= 1, 15)
    finally:
        runner.quit()
    drops = [s for s in run.samples if s["name"] == "drop"]
    assert len(drops) == 1
    assert drops[0]["context"]["error"] == "timeout" and str(drops[0]["exception"]) == "timeout: keepalive"
    assert run.count("SSH", "reconnect", ok=False) == 0
    assert run.count("HTTP", "POST /api/launch") == 2  # a new ticket for the reconnect
    assert not run.user_errors
