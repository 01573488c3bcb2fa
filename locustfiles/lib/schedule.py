"""Load schedules: what ``--shape`` and its parameters plan, as plain data.

This module never imports Locust (the campaign reads a plan before it starts Locust, and importing
Locust monkey-patches the interpreter). A :class:`Plan` is a list of :class:`Phase` s, each a user
count held for a while after a ramp; ``shapes.py`` turns it into a Locust ``LoadTestShape``.

Shapes:

- ``none``: one phase of ``-u`` users at ``-r``/s for ``-t`` (Locust's own plain run, no shape class).
- ``step``: a staircase, ``--step-users 10,20,40`` (or ``--step-start/--step-add/--step-count``);
  each step ramps for ``--step-ramp`` s (0: at ``-r``/s) and is then held ``--step-hold`` s.
- ``workday``: a compressed office day (:data:`WORKDAY`) peaking at ``-u`` users, ``--workday-minutes``
  long: logon storm, morning plateau, lunch dip, afternoon, logoff.
- ``arrivals``: a pool of ``-u`` users, sessions starting at ``--arrival-rate`` per second whether or
  not earlier ones have finished (see ``arrivals.py``), for ``-t``.

``-t/--run-time`` caps every shape.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from gateload.errors import InputError
from gateload.locustfiles.lib.cmdline import SHAPES, plain_parser

#: The compressed office day: (phase, real hours, share of the peak users, share of the phase spent
#: ramping to it). 08:00-17:00; the logon storm is the steep first quarter hour.
WORKDAY = (
    ("logon-storm", 1.0, 1.0, 0.25),
    ("morning", 3.0, 1.0, 0.0),
    ("lunch", 1.0, 0.6, 0.1),
    ("afternoon", 3.0, 0.9, 0.1),
    ("logoff", 1.0, 0.15, 0.5),
)
WORKDAY_HOURS = sum(p[1] for p in WORKDAY)


@dataclass(frozen=True)
class Phase:
    """Hold ``users`` for ``duration_s`` seconds; the first ``ramp_s`` of it are spent getting there."""

    users: int
    spawn_rate: float
    duration_s: float  # math.inf: until the run is stopped
    ramp_s: float = 0.0
    name: str = ""


@dataclass(frozen=True)
class Plan:
    """A shape with its parameters resolved into phases."""

    shape: str
    phases: tuple[Phase, ...]
    params: dict[str, Any] = field(default_factory=dict)
    run_time_s: float | None = None  # the -t cap, if any
    arrival_rate: float = 0.0  # sessions/s over the whole test (arrivals shape only)

    @property
    def steps(self) -> tuple[int, ...]:
        """Users of each phase (what the campaign's pre-flight line shows)."""
        return tuple(p.users for p in self.phases)

    @property
    def peak_users(self) -> int:
        return max(self.steps, default=0)

    @property
    def scheduled_s(self) -> float:
        """Length of the phases alone (math.inf if one is open-ended)."""
        return sum(p.duration_s for p in self.phases)

    @property
    def duration_s(self) -> float:
        """Planned length of the run: the phases, capped by -t; math.inf when nothing ends it."""
        if self.run_time_s is not None:
            return min(self.scheduled_s, self.run_time_s)
        return self.scheduled_s

    def at(self, elapsed: float) -> tuple[int, Phase] | None:
        """The phase (index, phase) at ``elapsed`` seconds into the run, or None once it is over."""
        if elapsed >= self.duration_s:
            return None
        end = 0.0
        for index, phase in enumerate(self.phases):
            end += phase.duration_s
            if elapsed < end:
                return index, phase
        return None

    def describe(self) -> str:
        if self.shape == "step":
            return f"step load {'/'.join(map(str, self.steps))} sessions"
        if self.shape == "workday":
            return f"workday load peaking at {self.peak_users} sessions"
        if self.shape == "arrivals":
            return f"{self.arrival_rate:g} session arrivals/s over a pool of {self.peak_users} users"
        return f"{self.peak_users} users"


# --- building plans --------------------------------------------------------------------------------


def build_plan(options: Any) -> Plan:
    """The plan for parsed options (Locust's or :func:`plan_from_args`'); InputError if inconsistent."""
    shape = getattr(options, "shape", "none") or "none"
    if shape not in SHAPES:
        raise InputError(f"--shape is {shape!r}; use one of {', '.join(SHAPES)}")
    run_time = _run_time(getattr(options, "run_time", None))
    users = getattr(options, "num_users", None)
    rate = getattr(options, "spawn_rate", None)
    builder = {"none": _plain, "step": _step, "workday": _workday, "arrivals": _arrivals}[shape]
    return builder(options, users, float(rate) if rate else 1.0, run_time)


def _plain(options: Any, users: int | None, rate: float, run_time: float | None) -> Plan:
    n = 1 if users is None else int(users)
    params = {"users": n, "spawn_rate": rate, "run_time_s": run_time}
    phase = Phase(n, rate, math.inf, ramp_s=n / rate)
    return Plan("none", (phase,), params, run_time)


def _step(options: Any, users: int | None, rate: float, run_time: float | None) -> Plan:
    levels = step_levels(options)
    hold = _number(options, "step_hold", minimum=1.0, why="each step needs time to reach steady state")
    ramp = _number(options, "step_ramp", minimum=0.0)
    phases: list[Phase] = []
    previous = 0
    for n in levels:
        delta = abs(n - previous)
        if ramp > 0:
            ramp_s, spawn_rate = ramp, max(delta / ramp, 0.1)
        else:  # no ramp given: Locust's -r, and the hold starts once the step is spawned
            ramp_s, spawn_rate = delta / rate, rate
        phases.append(Phase(n, spawn_rate, ramp_s + hold, ramp_s, name=f"step-{len(phases) + 1}"))
        previous = n
    params = {
        "users": list(levels),
        "hold_s": hold,
        "ramp_s": ramp,
        "spawn_rate": rate,
        "run_time_s": run_time,
    }
    return Plan("step", tuple(phases), params, run_time)


def _workday(options: Any, users: int | None, rate: float, run_time: float | None) -> Plan:
    if not users or int(users) < 1:
        raise InputError("--shape workday needs the peak user count: pass -u/--users, e.g. -u 100")
    peak = int(users)
    minutes = _number(options, "workday_minutes", minimum=0.1, why="the compressed day must last")
    hour_s = minutes * 60.0 / WORKDAY_HOURS
    phases, previous = [], 0
    for name, hours, share, ramp_share in WORKDAY:
        n = max(1, round(share * peak))
        length = hours * hour_s
        ramp_s = ramp_share * length if n != previous else 0.0
        spawn_rate = max(abs(n - previous) / ramp_s, 0.1) if ramp_s > 0 else rate
        phases.append(Phase(n, spawn_rate, length, ramp_s, name=name))
        previous = n
    params = {"peak_users": peak, "minutes": minutes, "run_time_s": run_time}
    return Plan("workday", tuple(phases), params, run_time)


def _arrivals(options: Any, users: int | None, rate: float, run_time: float | None) -> Plan:
    arrival_rate = _number(options, "arrival_rate", minimum=0.0)
    if arrival_rate <= 0:
        raise InputError("--shape arrivals needs --arrival-rate > 0 (sessions per second), e.g. 5")
    pool = 1 if users is None else int(users)
    if pool < 1:
        raise InputError("--shape arrivals needs a pool of users: pass -u/--users >= 1")
    params = {"arrival_rate": arrival_rate, "pool_users": pool, "spawn_rate": rate, "run_time_s": run_time}
    phase = Phase(pool, rate, math.inf, pool / rate, name="arrivals")
    return Plan("arrivals", (phase,), params, run_time, arrival_rate=arrival_rate)


def step_levels(options: Any) -> tuple[int, ...]:
    """The user count of each step, from --step-users or --step-start/--step-add/--step-count."""
    spec = (getattr(options, "step_users", "") or "").strip()
    count = int(getattr(options, "step_count", 0) or 0)
    if spec and count:
        raise InputError("give either --step-users or --step-start/--step-add/--step-count, not both")
    if spec:
        try:
            levels = tuple(int(x) for x in spec.replace(" ", "").split(","))
        except ValueError:
            raise InputError(
                f"--step-users is {spec!r}; write the user count of each step, e.g. --step-users 10,20,40"
            ) from None
    elif count:
        start = int(getattr(options, "step_start", 0) or 0)
        add = int(getattr(options, "step_add", 0) or 0)
        if count < 1 or start < 1 or add < 0:
            raise InputError("--step-count and --step-start must be >= 1 and --step-add >= 0")
        levels = tuple(start + i * add for i in range(count))
    else:
        raise InputError(
            "--shape step needs its steps: pass --step-users 10,20,40 "
            "or --step-start 10 --step-add 10 --step-count 4"
        )
    if any(n < 1 for n in levels):
        raise InputError(f"--step-users is {spec!r}; give every step at least 1 user")
    return levels


def _number(options: Any, dest: str, minimum: float, why: str = "") -> float:
    value: Any = getattr(options, dest, None)  # a number, a string from a form, or None
    flag = "--" + dest.replace("_", "-")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{flag} is {value!r}; give a number") from None
    if not math.isfinite(number) or number < minimum:
        reason = f" ({why})" if why else ""
        raise InputError(f"{flag} is {value!r}; it must be >= {minimum:g}{reason}")
    return number


# --- run time (Locust's -t syntax, parsed without importing Locust) --------------------------------

_TIMESPAN = re.compile(r"^(?:(?P<h>\d+)h)?\s*(?:(?P<m>\d+)m)?\s*(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


def parse_timespan(text: str) -> float:
    """Seconds in '90', '90s', '2m', '1h30m', like Locust's -t; InputError if malformed."""
    match = _TIMESPAN.match(str(text).strip())
    if not text or not match or not any(match.groupdict().values()):
        raise InputError(f"run time {text!r} is not a duration; write e.g. 30s, 5m or 1h30m")
    h, m, s = (match.group(k) for k in "hms")
    return int(h or 0) * 3600 + int(m or 0) * 60 + float(s or 0)


def _run_time(value: Any) -> float | None:
    if value in (None, "", 0):
        return None
    if isinstance(value, int | float):
        return float(value)
    return parse_timespan(value)


def plan_from_args(locust_args: list[str]) -> Plan:
    """The plan of a Locust command line (the campaign's pre-flight), read without importing Locust."""
    options, _unknown = plain_parser().parse_known_args(list(locust_args))
    return build_plan(options)
