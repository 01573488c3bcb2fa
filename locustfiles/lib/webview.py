"""The "gateload" tab of Locust's web UI: one table on the current (or last) run, refreshed with the stats.

Users running now; sessions started (logon succeeded), completed, failed; logon time and keystroke-like
echo (raw and from its intended start): count, p50, p95 over the last 30 s and the run; per server, its
operations (not aggregates such as SESSION rows), share of them, and share of even (1 = even).

Which operations these are comes from the run's operations catalogue (the roles ``logon``, ``session``
and ``echo``; ``SESSION logon``, ``SESSION session`` and ``SSH keystroke`` for the SSH homeoffice user).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np

from gateload.analysis.catalogue import LEGACY, Catalogue
from gateload.analysis.health import corrected_latency
from gateload.analysis.stats import bucket_index, bucket_value

KEY = "gateload"
TITLE = "gateload"
WINDOW_S = 30
RING = WINDOW_S + 2  # per-second slots kept (a batch arrives up to ~2 s after its samples completed)
MAX_VALUES_PER_SLOT = 20_000  # per latency and second; the window's counts stay exact beyond it
N_BUCKETS = 6_000  # log buckets from 1 us to ~7 h
MAX_SERVERS = 256  # distinct server values tracked (the profile's first); further ones count as OTHER
OTHER = "(other)"

LATENCIES = ("logon", "echo", "echo_intended")
COUNTS = ("started", "completed", "logons_failed", "sessions_failed")

#: (row id, label) of the count rows and the latency rows, in table order.
COUNT_ROWS = (
    ("started", "Sessions started (logon succeeded)"),
    ("completed", "Sessions completed (logged off)"),
    ("logons_failed", "Logons failed"),
    ("sessions_failed", "Sessions ended by a failure"),
)
LATENCY_ROWS = (
    ("logon", "Logon time ({logon})"),
    ("echo", "Keystroke echo ({echo})"),
    ("echo_intended", "Keystroke echo from intended start"),
)

#: The table's columns. Keys without underscores: the UI camel-cases structure keys.
STRUCTURE = (
    ("metric", "gateload"),
    ("recent", f"Last {WINDOW_S} s"),
    ("recentp50", f"p50 ms ({WINDOW_S} s)"),
    ("recentp95", f"p95 ms ({WINDOW_S} s)"),
    ("run", "Run"),
    ("runp50", "p50 ms (run)"),
    ("runp95", "p95 ms (run)"),
    ("share", "Share (run)"),
    ("shareofeven", "Share of even"),
)


@dataclass(frozen=True)
class Latency:
    count: int
    p50: float  # ms; NaN without samples
    p95: float


@dataclass
class Snapshot:
    """The view at one moment, unrounded."""

    run_id: str
    users: int | None
    recent: dict[str, int]  # COUNTS over the last WINDOW_S seconds
    run: dict[str, int]  # COUNTS over the run
    recent_latency: dict[str, Latency]
    run_latency: dict[str, Latency]
    recent_servers: dict[str, int]  # operations per server id
    run_servers: dict[str, int]
    share: dict[str, float]  # of the run's operations with a known server
    share_of_even: dict[str, float]  # share * number of servers


@dataclass
class _Slot:
    second: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    values: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in LATENCIES})
    n: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LATENCIES, 0))  # samples, all counted
    stored: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LATENCIES, 0))  # values kept
    servers: dict[int, int] = field(default_factory=dict)  # server code -> operations


def nearest_rank(values: np.ndarray, q: float) -> float:
    """The smallest value with at least ``q`` of the values at or below it (NaN if none)."""
    return float(np.quantile(values, q, method="inverted_cdf")) if len(values) else math.nan


def hist_rank(hist: np.ndarray, q: float) -> float:
    """:func:`nearest_rank` read from a log histogram: the midpoint of the bucket holding that value."""
    cum = np.cumsum(hist)
    n = int(cum[-1]) if len(cum) else 0
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(q * n - 1e-9))
    return float(bucket_value(int(np.searchsorted(cum, rank))))


class LiveView:
    """Bounded live aggregate of the samples of the current run (a new run id starts it over).

    The recorder hands it every batch it writes (local runner or master, so workers' samples too),
    about once a second. A batch is aggregated with numpy into a ring of per-second slots (the last
    ``WINDOW_S`` seconds of completion time: exact nearest-rank percentiles of at most
    ``MAX_VALUES_PER_SLOT`` values per second and latency) and run-long log histograms (the buckets of
    ``gateload.analysis.stats``: the same nearest rank, within 0.2 %), so memory stays bounded however long
    the run. Percentiles are over successful samples, as in the analysis.
    """

    def __init__(
        self,
        users: Callable[[], int] | None = None,
        servers: Callable[[], Iterable[str]] | None = None,
        clock: Callable[[], float] = time.time,
        operations: Callable[[], Catalogue | None] | None = None,
    ) -> None:
        self._users = users
        self._servers = servers
        self._operations = operations
        self._clock = clock
        self.reset("")

    def reset(self, run_id: str) -> None:
        """Start over for a new run; ``servers`` (the profile's ids) are read now, so they show at 0."""
        self.run_id = run_id
        self._ring: list[_Slot | None] = [None] * RING
        self._counts = dict.fromkeys(COUNTS, 0)
        self._hist = {k: np.zeros(N_BUCKETS, np.int64) for k in LATENCIES}
        self._names: list[str] = []  # server code -> id: the profile's first, then as they appear
        self._code_of_name: dict[str, int] = {}
        self._code_of: dict[Any, int] = {None: -1}  # a row's server value -> code (-1: unknown)
        self._run_servers: list[int] = []  # operations per server code
        known: Iterable[str] = ()
        if run_id and self._servers is not None:
            try:
                known = self._servers() or ()
            except Exception:  # a profile that no longer loads: the servers seen still show
                known = ()
        for sid in known:
            self._code_of[str(sid)] = self._server_code(str(sid))
        self._n_profile = len(self._names)
        self._read_catalogue(bool(run_id))

    def _read_catalogue(self, running: bool) -> None:
        """The (type, name) of the logon, session and echo roles, and the aggregates, for this run."""
        cat: Catalogue | None = None
        if running and self._operations is not None:
            try:
                cat = self._operations()
            except Exception:  # a profile that no longer loads: show the homeoffice user's operations
                cat = None
        cat = cat or LEGACY
        self._roles = {
            r: tuple(k.split(" ", 1)) if (k := cat.role(r)) else None for r in ("logon", "session", "echo")
        }
        self._aggregates = [tuple(k.split(" ", 1)) for k in sorted(cat.aggregates)]
        self._labels = {"logon": cat.logon or "none", "echo": cat.echo or "none"}

    # --- feeding ----------------------------------------------------------------------------------

    def add_batch(self, run_id: str, cols: Mapping[str, list]) -> None:
        """Aggregate one batch of the recorder's column lists (``recorder.HOT_COLUMNS``)."""
        if run_id != self.run_id:
            self.reset(run_id)
        if not len(cols["t_start"]):
            return
        kind = np.asarray(cols["type"], dtype=object)
        name = np.asarray(cols["name"], dtype=object)
        ok = np.asarray(cols["success"], dtype=bool)
        dur = np.asarray(cols["duration_ms"], dtype=float)
        t_start = np.asarray(cols["t_start"], dtype=float)
        second = np.floor(t_start + np.nan_to_num(dur) / 1000.0).astype(np.int64)  # completion time

        logon, ended, echo = (self._is(kind, name, role) for role in ("logon", "session", "echo"))
        session = np.zeros(len(kind), bool)  # aggregate rows: not operations
        for k, n in self._aggregates:
            session |= (kind == k) & (name == n)
        counted = {  # key -> completion seconds of its samples
            "started": second[logon & ok],
            "completed": second[ended & ok],
            "logons_failed": second[logon & ~ok],
            "sessions_failed": second[ended & ~ok],
        }
        latencies = {"logon": (dur[logon & ok], second[logon & ok])}  # key -> (ms, completion seconds)
        echo &= ok
        if echo.any():
            t_intended = np.asarray(cols["t_intended"], dtype=float)
            raw, at = dur[echo], second[echo]
            latencies["echo"] = (raw, at)
            latencies["echo_intended"] = (corrected_latency(t_start[echo], raw, t_intended[echo]), at)
        latencies = {k: (v[np.isfinite(v)], t[np.isfinite(v)]) for k, (v, t) in latencies.items()}
        servers, other = cols["server"], -1
        for value in sorted(set(servers).difference(self._code_of), key=str):
            if len(self._code_of) <= MAX_SERVERS:  # None's entry and MAX_SERVERS server ids
                self._code_of[value] = self._server_code(str(value))
            else:  # a target naming ever new servers: memory stays bounded
                other = self._server_code(OTHER)
        code = np.fromiter(map(self._code_of.get, servers, repeat(other)), np.int64, len(servers))
        known = ~session & (code >= 0)  # operations (not SESSION rows) with a known server
        codes, code_seconds = code[known], second[known]

        # the run
        for key, seconds in counted.items():
            self._counts[key] += len(seconds)
        for key, (values, _) in latencies.items():
            idx = np.minimum(bucket_index(values), N_BUCKETS - 1)
            self._hist[key] += np.bincount(idx, minlength=N_BUCKETS)
        for c, count in enumerate(np.bincount(codes, minlength=len(self._names)).tolist()):
            self._run_servers[c] += count

        # the window: one slot per second of completion time
        for sec in np.unique(second).tolist():
            slot = self._slot(sec)
            if slot is None:
                continue
            for key, seconds in counted.items():
                slot.counts[key] += int(np.count_nonzero(seconds == sec))
            for key, (values, seconds) in latencies.items():
                here = values[seconds == sec]
                slot.n[key] += len(here)
                here = here[: MAX_VALUES_PER_SLOT - slot.stored[key]]
                if len(here):
                    slot.values[key].append(here)
                    slot.stored[key] += len(here)
            for c, count in enumerate(np.bincount(codes[code_seconds == sec]).tolist()):
                if count:
                    slot.servers[c] = slot.servers.get(c, 0) + count

    def _is(self, kind: np.ndarray, name: np.ndarray, role: str) -> np.ndarray:
        """Rows of the run's operation with ``role`` (none when its catalogue has no such operation)."""
        op = self._roles.get(role)
        return (kind == op[0]) & (name == op[1]) if op else np.zeros(len(kind), bool)

    def _server_code(self, sid: str) -> int:
        code = self._code_of_name.get(sid)
        if code is None:
            code = self._code_of_name[sid] = len(self._names)
            self._names.append(sid)
            self._run_servers.append(0)
        return code

    def _slot(self, second: int) -> _Slot | None:
        """The slot of ``second``; None if the ring has moved past it (too old for the window)."""
        i = second % RING
        slot = self._ring[i]
        if slot is None or slot.second < second:
            slot = self._ring[i] = _Slot(second)
        return slot if slot.second == second else None

    # --- reading ----------------------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> Snapshot:
        """The view now: the window is the ``WINDOW_S`` seconds of completion time up to ``now``."""
        now = self._clock() if now is None else now
        first = math.floor(now) - WINDOW_S + 1
        slots = [s for s in self._ring if s is not None and s.second >= first]
        recent = {k: sum(s.counts[k] for s in slots) for k in COUNTS}
        recent_latency = {}
        for key in LATENCIES:
            parts = [v for s in slots for v in s.values[key]]
            values = np.concatenate(parts) if parts else np.empty(0)
            count = sum(s.n[key] for s in slots)
            recent_latency[key] = Latency(count, nearest_rank(values, 0.5), nearest_rank(values, 0.95))
        run_latency = {
            key: Latency(int(h.sum()), hist_rank(h, 0.5), hist_rank(h, 0.95)) for key, h in self._hist.items()
        }
        names, k = self._names, self._n_profile  # the profile's servers in its order, then the others
        order = [*range(k), *sorted(range(k, len(names)), key=names.__getitem__)]
        recent_servers = {names[c]: 0 for c in order}
        for s in slots:
            for c, count in s.servers.items():
                recent_servers[names[c]] += count
        run_servers = {names[c]: self._run_servers[c] for c in order}
        total = sum(run_servers.values())
        share = {sid: (c / total if total else math.nan) for sid, c in run_servers.items()}
        even = {sid: v * len(names) for sid, v in share.items()}
        users = None
        if self._users is not None:
            try:
                users = int(self._users())
            except Exception:
                users = None
        return Snapshot(
            self.run_id,
            users,
            recent,
            dict(self._counts),
            recent_latency,
            run_latency,
            recent_servers,
            run_servers,
            share,
            even,
        )

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """The table's rows (keys of ``STRUCTURE`` plus ``row``, an id), rounded, JSON-safe."""
        snap = self.snapshot(now)
        rows: list[dict[str, Any]] = [{"row": "users", "metric": "Users running now", "recent": snap.users}]
        for key, label in COUNT_ROWS:
            rows.append({"row": key, "metric": label, "recent": snap.recent[key], "run": snap.run[key]})
        for key, label in LATENCY_ROWS:
            r, a = snap.recent_latency[key], snap.run_latency[key]
            rows.append(
                {
                    "row": key,
                    "metric": label.format(**self._labels),
                    "recent": r.count,
                    "recentp50": _ms(r.p50),
                    "recentp95": _ms(r.p95),
                    "run": a.count,
                    "runp50": _ms(a.p50),
                    "runp95": _ms(a.p95),
                }
            )
        for sid, count in snap.run_servers.items():
            rows.append(
                {
                    "row": f"server:{sid}",
                    "metric": f"Server {sid}",
                    "recent": snap.recent_servers.get(sid, 0),
                    "run": count,
                    "share": _num(snap.share[sid], 4),
                    "shareofeven": _num(snap.share_of_even[sid], 3),
                }
            )
        return [{k: row.get(k) for k in ("row", *(c for c, _ in STRUCTURE))} for row in rows]


def _num(x: float, digits: int) -> float | None:
    return round(x, digits) if math.isfinite(x) else None


def _ms(x: float) -> float | None:
    return _num(x, 2 if x < 100 else 1)


# --- Locust's web UI --------------------------------------------------------------------------------


def template_args() -> dict[str, list[dict[str, Any]]]:
    """What the page needs to show the tab (Locust merges these into its own template args)."""
    return {
        "extended_tabs": [{"title": TITLE, "key": KEY}],
        "extended_tables": [{"key": KEY, "structure": [{"key": k, "title": t} for k, t in STRUCTURE]}],
    }


def attach(environment: Any, web_ui: Any, controller: Any) -> LiveView:
    """Add the tab to ``web_ui`` and feed it from the controller's recorder (local runner or master).

    The tab is declared in the page's template args (``update_template_args()`` merges, so they stay);
    its rows ride on the ``/stats/requests`` JSON as ``extended_stats``, which the page polls.
    """
    from flask import request

    from gateload.locustfiles.lib import runinfo

    def servers() -> Iterable[str]:
        run = getattr(controller, "run", None)
        resolved = run.resolved if run is not None else getattr(controller, "resolved", None)
        profile = getattr(resolved, "profile", None)
        return profile.server_ids if profile is not None else ()

    def operations() -> Catalogue | None:
        run = getattr(controller, "run", None)
        resolved = run.resolved if run is not None else getattr(controller, "resolved", None)
        return runinfo.catalogue(environment.user_classes, getattr(resolved, "profile", None))

    view = LiveView(users=lambda: environment.runner.user_count, servers=servers, operations=operations)
    controller.recorder.on_batch = view.add_batch
    args = web_ui.template_args  # update_template_args() merges into it: these keys survive
    for key, items in template_args().items():
        args[key] = [*(i for i in args.get(key) or [] if i.get("key") != KEY), *items]

    @web_ui.app.after_request
    def _add_gateload_stats(response: Any) -> Any:
        ours = request.path.endswith("/stats/requests") and response.status_code == 200
        if not (ours and response.is_json):
            return response
        data = response.get_json()
        # Locust caches this response for ~2 s and hands the same object out again: replace our entry.
        extended = [e for e in data.get("extended_stats") or [] if e.get("key") != KEY]
        data["extended_stats"] = [*extended, {"key": KEY, "data": view.rows()}]
        response.set_data(json.dumps(data))
        return response

    return view
