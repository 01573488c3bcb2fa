"""The Locust load shape that follows a :class:`~gateload.locustfiles.lib.schedule.Plan` (step, workday,
arrivals).

One class serves every gateload shape: the run controller installs an instance as
``environment.shape_class`` when ``--shape`` is not ``none`` (and removes it for ``none``, so a plain
run is exactly Locust's own -u/-r/-t run). It is marked ``abstract`` so that Locust never picks it up
by itself from a locustfile, and ``use_common_options`` because it honours -u/-r/-t (the web UI keeps
those fields).

The plan is read again from ``parsed_options`` whenever the shape (re)starts, so values changed in the
web UI apply. Every phase change is recorded with its real epoch start time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from locust import LoadTestShape

from gateload.errors import InputError
from gateload.locustfiles.lib.schedule import Phase, Plan, build_plan

logger = logging.getLogger(__name__)

PhaseListener = Callable[[int, Phase, "PlannedShape"], None]


class PlannedShape(LoadTestShape):
    """Follows a plan's phases; ``steps`` holds the phases as they really happened."""

    abstract = True  # installed by the run controller, never auto-selected by Locust
    use_common_options = True

    def __init__(self, plan: Plan | None = None, on_phase: PhaseListener | None = None) -> None:
        super().__init__()
        self.plan = plan
        self.on_phase = on_phase
        self.finished = False
        self.steps: list[dict[str, Any]] = []
        self._index: int | None = None
        self.started_at = time.time()

    def reset_time(self) -> None:
        """(Re)start the schedule with the plan of the current options (the web UI may have changed them)."""
        super().reset_time()
        if self.runner is not None and gevent.getcurrent() is self.runner.shape_greenlet:
            # MasterRunner.start() resets the clock again from inside the first tick's start(): the
            # run has begun, keep its first step.
            return
        self.started_at = time.time()
        self.finished = False
        self.steps = []
        self._index = None
        options = getattr(getattr(self.runner, "environment", None), "parsed_options", None)
        if options is not None:
            try:
                self.plan = build_plan(options)
            except InputError as exc:  # checked before the start; only a bug gets here
                logger.error("gateload shape: %s", exc)
                self.plan = None

    def tick(self) -> tuple[int, float] | None:
        if self.plan is None:
            return None
        hit = self.plan.at(self.get_run_time())
        if hit is None:
            if not self.finished:
                self.finished = True
                self._close(time.time())
            return None
        index, phase = hit
        if index != self._index:
            self._index = index
            self._begin(index, phase)
        return phase.users, phase.spawn_rate

    def _begin(self, index: int, phase: Phase) -> None:
        now = time.time()
        self._close(now)
        self.steps.append(
            {
                "index": index,
                "start": now,
                "end": None,
                "users": phase.users,
                "spawn_rate": phase.spawn_rate,
                "phase": phase.name,
                "ramp_s": phase.ramp_s,
                "planned_duration_s": phase.duration_s if phase.duration_s != float("inf") else None,
                "spawned": None,
            }
        )
        if self.on_phase is not None:
            self.on_phase(index, phase, self)

    def _close(self, now: float) -> None:
        if self.steps and self.steps[-1]["end"] is None:
            self.steps[-1]["end"] = now
