"""The sample recorder: every Locust request becomes one raw row of
``gateload.analysis.schema.SAMPLE_SCHEMA``.

Hot path: :meth:`Recorder.on_request` (a listener of ``events.request``) appends one value to each of a
few column lists; nothing else. A flusher greenlet takes the lists whole every second (or as soon as
they hold ``max_rows`` rows) and hands them on:

- **local runner**: to a real OS thread (``samplewriter.PartWriter``: a one-thread gevent ``ThreadPool``)
  that builds the Arrow table and writes a part file; greenlets never wait for the disk. The
  flusher waits for the previous write before it hands over the next batch, so at most two batches
  are in memory besides the one being filled.
- **worker** (``--processes``, ``--worker``): to the master, as a custom message (``gateload_samples``).
  At ``test_stop`` the worker sends the rest, pushes its Locust stats, then a final message
  (``gateload_final``) with the number of batches and rows it sent, all before Locust reports the
  worker stopped.
- **master**: collects the workers' batches and writes them like the local runner. At ``test_stop`` it
  asks every worker to stop and flush (``gateload_flush``; when Locust quits, the master's test_stop
  comes before the workers have stopped) and waits, bounded, until each connected worker's final
  message has arrived and the rows received match the rows announced. Messages from one worker arrive
  in order, so nothing is lost or counted twice; a worker that vanished is reported as a problem.

``on_batch`` (optional; local runner or master): called as ``on_batch(run_id, columns)`` with every batch
of column lists this process writes, after it is handed to the writer (the web UI's live view,
``webview.py``, aggregates them); an error in it is logged once per run and never costs samples.

Row fields: ``t_start`` is the event's ``start_time`` (or ``context["start_time"]``, else now minus the
response time); ``t_intended``, ``user_id``, ``server`` and ``error`` come from the request context
(``error`` falls back to ``gateload.locustfiles.lib.errors.classify(exception)``, else "other");
``worker`` is ``hostname:pid`` of the process that recorded the sample.

``user_count`` is the number of users running on the whole test: the runner's count on a local
runner. On a worker it is its own running users (exact) plus the other workers' users as the master
last saw them: the master broadcasts every worker's count (``gateload_users``) every 0.25 s for the
first 2 s of a run, then every second, so the other workers' share lags a change by about that plus
Locust's report delay. Until the first broadcast arrives the others are assumed to run as many users
as this worker (Locust spreads users evenly).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event

from gateload.locustfiles.lib.clockwatch import ClockWatch

# to_table is re-exported: callers (tests, the web view) build tables from batches through the recorder
from gateload.locustfiles.lib.samplewriter import HOT_COLUMNS, Chunk, PartWriter, to_table

__all__ = ["HOT_COLUMNS", "RecordResult", "Recorder", "process_name", "role_of", "to_table"]

logger = logging.getLogger(__name__)

MSG_SAMPLES = "gateload_samples"
MSG_FINAL = "gateload_final"
MSG_FLUSH = "gateload_flush"
MSG_USERS = "gateload_users"

FLUSH_INTERVAL_S = 1.0
MAX_ROWS = 50_000
USERS_BROADCAST_S = 1.0
USERS_BROADCAST_EARLY_S = 2.0  # broadcast 4x as often at first, while users are being spawned
FINAL_WAIT_S = 15.0

_NAN = math.nan
_EMPTY: Mapping[str, Any] = {}


def process_name() -> str:
    """``hostname:pid`` of this load-generator process (computed when asked: --processes forks)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def role_of(runner: Any) -> str:
    """The runner's role: local, master or worker."""
    from locust.runners import MasterRunner, WorkerRunner

    if isinstance(runner, MasterRunner):
        return "master"
    return "worker" if isinstance(runner, WorkerRunner) else "local"


# --- the recorder -----------------------------------------------------------------------------------


class Columns:
    """The column lists the request hook appends to."""

    __slots__ = HOT_COLUMNS
    # the slots' types, for mypy (annotations only: no class attribute clashes with the slots)
    t_start: list[float]
    t_intended: list[float]
    duration_ms: list[float]
    type: list[str]
    name: list[str]
    success: list[bool]
    error: list[str | None]
    bytes: list[int | None]
    user_id: list[Any]
    user_count: list[int]
    server: list[str | None]

    def __init__(self) -> None:
        for name in HOT_COLUMNS:
            setattr(self, name, [])

    def __len__(self) -> int:
        return len(self.t_start)

    def trim(self) -> None:
        """Drop a row cut short: a second Ctrl-C raises KeyboardInterrupt in whichever greenlet runs
        (:mod:`interrupt`), possibly between two appends. Columns are appended in order, so ``server``
        (the last) counts whole rows."""
        n = len(self.server)
        for name in HOT_COLUMNS:
            del getattr(self, name)[n:]

    def as_dict(self) -> dict[str, list[Any]]:
        self.trim()
        return {name: getattr(self, name) for name in HOT_COLUMNS}


@dataclass
class Source:
    """What the master got from one worker during a run."""

    name: str
    batches: int = 0
    rows: int = 0
    final: dict[str, Any] | None = None
    seqs: set[int] = field(default_factory=set)  # batch numbers received (a re-sent one counts once)

    @property
    def done(self) -> bool:
        return (
            self.final is not None
            and self.final["rows"] == self.rows
            and self.final["batches"] == self.batches
        )


@dataclass
class RecordResult:
    """How recording went: rows written, and any reason to doubt that they are all there."""

    rows: int
    batches: int
    problems: list[str] = field(default_factory=list)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    cpu_warnings: int = 0
    dropped: int = 0  # requests fired while no run was being recorded
    pauses: list[dict[str, Any]] = field(default_factory=list)  # every process's (clockwatch.py)

    @property
    def complete(self) -> bool:
        return not self.problems


def _load_classify() -> Callable[[BaseException], str | None] | None:
    try:
        from gateload.locustfiles.lib.errors import classify
    except ImportError:
        return None
    return classify


class Recorder:
    """Records every request of this process; see the module docstring for the roles."""

    def __init__(
        self,
        environment: Any,
        *,
        flush_interval: float = FLUSH_INTERVAL_S,
        max_rows: int = MAX_ROWS,
        final_wait_s: float = FINAL_WAIT_S,
    ) -> None:
        self.env = environment
        self.role = role_of(environment.runner)
        self.flush_interval = flush_interval
        self.max_rows = max_rows
        self.final_wait_s = final_wait_s
        self.active = False
        self.run_id = ""
        self.name = ""
        self._cols = Columns()
        self._chunks: list[Chunk] = []  # master: workers' batches waiting to be written
        self._chunk_rows = 0
        self._writer = PartWriter()
        self._wake = Event()
        self._flusher: gevent.Greenlet | None = None
        self._broadcaster: gevent.Greenlet | None = None
        self._sent_batches = 0
        self._sent_rows = 0
        self._unsent: dict[str, Any] | None = None
        self._unwritten: list[Chunk] = []
        self._others = 0  # worker: users running on the other workers, as the master last said
        self._slots = 1
        self._sources: dict[str, Source] = {}
        self._participants: set[str] = set()
        self._sent = Event()  # worker: set once finish() has sent the rest and the final count
        self._sent.set()  # nothing to send before a run starts
        self._finals: dict[str, dict[str, Any]] = {}
        self._cpu_warnings = 0
        self._dropped = 0
        self._clock: ClockWatch | None = None
        self._classify = _load_classify()
        self.on_batch: Callable[[str, Mapping[str, list]], None] | None = None  # see the module docstring
        self._on_batch_failed = False
        environment.events.request.add_listener(self.on_request)
        environment.events.cpu_warning.add_listener(self._on_cpu_warning)
        self._register_messages()

    # --- lifecycle --------------------------------------------------------------------------------

    def start(
        self, run_id: str, run_dir: Path | None = None, participants: set[str] | None = None, slots: int = 1
    ) -> None:
        """Begin recording a run (local/master: into ``run_dir``; worker: for the master's ``run_id``,
        one of ``slots`` workers)."""
        self.run_id, self.name = run_id, process_name()
        self._cols, self._chunks, self._chunk_rows = Columns(), [], 0
        self._sent_batches = self._sent_rows = self._cpu_warnings = self._dropped = 0
        self._unsent, self._unwritten = None, []
        self._others, self._slots = -1, max(1, slots)
        self._sources, self._participants = {}, set(participants or ())
        self._on_batch_failed = False
        self._sent = Event()  # worker: set once finish() has sent the rest and the final count
        if run_dir is not None:
            self._writer.open(run_dir, self.name.replace(":", "-"))
        self.active = True
        self._wake.clear()
        self._flusher = gevent.spawn(self._flush_loop)
        if self._clock is not None:  # a start without a finish (a run abandoned half-way)
            self._clock.stop()
        self._clock = ClockWatch(self.name)
        self._clock.start()
        if self.role == "master":
            self._broadcaster = gevent.spawn(self._broadcast_users)

    def finish(self, extra: Mapping[str, Any] | None = None) -> RecordResult:
        """Stop recording: everything recorded is written (or sent, on a worker) when this returns.

        ``extra``: more facts for a worker's final message (the master finds them in ``workers``).
        """
        if not self.active:
            return RecordResult(self._writer.rows, self._writer.seq, dropped=self._dropped)
        problems: list[str] = []
        if self.role == "master":
            problems += self._collect_finals()
        self.active = False
        self._stop_flusher()
        pauses = self._clock.stop() if self._clock is not None else []
        if self.role == "worker":
            if self._unsent is not None:
                self._send_batch(self._unsent)
            self._flush_to_master()
            self._push_stats()
            self._send_final({**(extra or {}), "pauses": pauses})
            self._sent.set()
            return RecordResult(
                self._sent_rows, self._sent_batches, cpu_warnings=self._cpu_warnings, pauses=pauses
            )
        self._flush_to_disk()
        self._writer.wait()
        problems += self._writer.errors
        workers = {
            s.name: {"batches": s.batches, "rows": s.rows, "final": s.final} for s in self._sources.values()
        }
        cpu = self._cpu_warnings + sum((s.final or {}).get("cpu_warnings", 0) for s in self._sources.values())
        pauses += [p for s in self._sources.values() for p in (s.final or {}).get("pauses") or ()]
        return RecordResult(
            self._writer.rows, self._writer.seq, problems, workers, cpu, self._dropped, pauses
        )

    def wait_sent(self, timeout: float) -> bool:
        """Worker: wait (bounded) until a finish() under way in another greenlet has sent the final count."""
        return bool(self._sent.wait(timeout))

    def _stop_flusher(self) -> None:
        self._wake.set()
        for greenlet in (self._flusher, self._broadcaster):
            if greenlet is not None and greenlet is not gevent.getcurrent():
                greenlet.join(timeout=30)
                greenlet.kill(block=True)
        self._flusher = self._broadcaster = None

    # --- hot path ---------------------------------------------------------------------------------

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: float | None,
        response_length: int | None,
        exception: BaseException | None = None,
        context: Mapping[str, Any] | None = None,
        start_time: float | None = None,
        **_kwargs: Any,
    ) -> None:
        """``events.request`` listener: one row, appended column by column."""
        if not self.active:
            self._dropped += 1
            return
        ctx = context if isinstance(context, dict) else _EMPTY
        c = self._cols
        if len(c.t_start) != len(c.server):  # the previous row was cut short (see Columns.trim)
            c.trim()
        if start_time is None:
            start_time = ctx.get("start_time")
            if start_time is None:
                start_time = time.time() - (response_time or 0.0) / 1000.0
        c.t_start.append(start_time)
        t_intended = ctx.get("t_intended")
        c.t_intended.append(_NAN if t_intended is None else t_intended)
        c.duration_ms.append(_NAN if response_time is None else response_time)
        c.type.append(request_type)
        c.name.append(name)
        if exception is None:
            c.success.append(True)
            c.error.append(None)
        else:
            c.success.append(False)
            c.error.append(ctx.get("error") or self._error_class(exception))
        c.bytes.append(response_length)
        c.user_id.append(ctx.get("user_id"))
        mine = self.env.runner.user_count
        others = self._others
        c.user_count.append(mine + (others if others >= 0 else mine * (self._slots - 1)))
        c.server.append(ctx.get("server"))
        if len(c.t_start) >= self.max_rows:
            self._wake.set()

    def _error_class(self, exception: BaseException) -> str:
        if self._classify is not None:
            try:
                return self._classify(exception) or "other"
            except Exception:
                return "other"
        return "other"

    # --- flushing ---------------------------------------------------------------------------------

    def _flush_loop(self) -> None:
        while self.active:
            self._wake.wait(timeout=self.flush_interval)
            self._wake.clear()
            if not self.active:
                return
            if self.role == "worker":
                self._flush_to_master()
            else:
                self._flush_to_disk()

    def _take(self) -> dict[str, list] | None:
        if not len(self._cols):
            return None
        cols, self._cols = self._cols, Columns()
        return cols.as_dict()

    def _flush_to_disk(self) -> None:
        chunks, self._chunks, self._chunk_rows = self._chunks, [], 0
        cols = self._take()
        if cols is not None:
            chunks.append((cols, self.name))
        fresh, chunks = chunks, self._unwritten + chunks
        if chunks:
            # Kept until handed over: if this greenlet dies here (Ctrl-C), finish() writes them.
            self._unwritten = chunks
            self._writer.submit(chunks)
            self._unwritten = []
        if self.on_batch is not None:
            self._notify(fresh)

    def _notify(self, chunks: list[Chunk]) -> None:
        """Hand each new batch to ``on_batch`` (a view, never the samples' way to disk)."""
        assert self.on_batch is not None
        for cols, _worker in chunks:
            try:
                self.on_batch(self.run_id, cols)
            except Exception as exc:
                if not self._on_batch_failed:
                    self._on_batch_failed = True
                    logger.error("gateload recorder: on_batch failed (samples are still written): %r", exc)

    def _flush_to_master(self) -> None:
        cols = self._take()
        if cols is None:
            return
        data = {"run": self.run_id, "worker": self.name, "seq": self._sent_batches, "cols": cols}
        self._sent_batches += 1
        self._sent_rows += len(cols["t_start"])
        self._send_batch(data)

    def _send_batch(self, data: dict[str, Any]) -> None:
        # Kept until sent: if this greenlet dies mid-send (Ctrl-C), finish() sends it again with the
        # same number, and the master counts it once.
        self._unsent = data
        self.env.runner.send_message(MSG_SAMPLES, data)
        self._unsent = None

    # --- distributed: messages --------------------------------------------------------------------

    def _register_messages(self) -> None:
        runner = self.env.runner
        if self.role == "master":
            runner.register_message(MSG_SAMPLES, self._on_samples)
            runner.register_message(MSG_FINAL, self._on_final)
        elif self.role == "worker":
            runner.register_message(MSG_FLUSH, self._on_flush)
            runner.register_message(MSG_USERS, self._on_users)

    def _on_samples(self, environment: Any, msg: Any, **_kw: Any) -> None:
        data = msg.data
        rows = len(data["cols"]["t_start"])
        if not self.active or data["run"] != self.run_id:
            logger.warning(
                "gateload recorder: %d samples from %s arrived after run %s ended",
                rows,
                data["worker"],
                data["run"],
            )
            return
        source = self._sources.setdefault(msg.node_id, Source(data["worker"]))
        if data["seq"] in source.seqs:
            return  # re-sent after an interrupted send that had got through after all
        source.seqs.add(data["seq"])
        source.batches += 1
        source.rows += rows
        self._chunks.append((data["cols"], data["worker"]))
        self._chunk_rows += rows
        if self._chunk_rows >= self.max_rows:
            self._wake.set()

    def _on_final(self, environment: Any, msg: Any, **_kw: Any) -> None:
        data = msg.data
        if data["run"] == self.run_id:
            self._sources.setdefault(msg.node_id, Source(data["worker"])).final = data

    def _on_flush(self, environment: Any, msg: Any, **_kw: Any) -> None:
        run = msg.data.get("run")
        if self.active and run == self.run_id:
            environment.runner.stop()  # test_stop -> finish(): the rest, stats, final
            if self.active:  # nobody called finish() from test_stop
                self.finish()
        elif run in self._finals:  # finished already: say it again, it is idempotent
            environment.runner.send_message(MSG_FINAL, self._finals[run])
        elif run != self.run_id:  # never recorded that run (it started no users here)
            final = {"run": run, "worker": process_name(), "batches": 0, "rows": 0}
            environment.runner.send_message(MSG_FINAL, final)
        # else: finishing this run right now; its final message follows the last batch

    def _on_users(self, environment: Any, msg: Any, **_kw: Any) -> None:
        if self.active and msg.data.get("run") == self.run_id:
            me = environment.runner.client_id
            self._others = sum(int(n) for cid, n in msg.data["users"].items() if cid != me)

    def _broadcast_users(self) -> None:
        runner = self.env.runner
        started = time.monotonic()
        while self.active:
            users = {cid: runner.clients[cid].user_count for cid in runner.clients}
            try:
                runner.send_message(MSG_USERS, {"run": self.run_id, "users": users})
            except Exception as exc:  # a worker going away must not end the broadcast
                logger.debug("gateload recorder: user count broadcast failed: %s", exc)
            early = time.monotonic() - started < USERS_BROADCAST_EARLY_S
            self._wake_or_sleep(USERS_BROADCAST_S / 4 if early else USERS_BROADCAST_S)

    def _wake_or_sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.active and time.monotonic() < deadline:
            gevent.sleep(min(0.1, seconds))

    def _push_stats(self) -> None:
        """Send Locust's stats now, so the master's request count includes everything sent here."""
        runner = self.env.runner
        data: dict[str, Any] = {}
        try:
            self.env.events.report_to_master.fire(client_id=runner.client_id, data=data)
            runner.send_message("stats", data)
        except Exception as exc:
            logger.error("gateload recorder: could not push stats to the master: %s", exc)

    def _send_final(self, extra: Mapping[str, Any]) -> None:
        final = {
            **extra,
            "run": self.run_id,
            "worker": self.name,
            "batches": self._sent_batches,
            "rows": self._sent_rows,
            "cpu_warnings": self._cpu_warnings,
        }
        self._finals = {self.run_id: final}
        try:
            self.env.runner.send_message(MSG_FINAL, final)
        except Exception as exc:
            logger.error("gateload recorder: could not send the final batch count: %s", exc)

    def _collect_finals(self) -> list[str]:
        """Master: ask workers to flush, then wait (bounded) for every connected worker's final count."""
        runner = self.env.runner
        try:
            runner.send_message(MSG_FLUSH, {"run": self.run_id})
        except Exception as exc:
            logger.error("gateload recorder: could not ask workers to flush: %s", exc)
        wait = self.final_wait_s + float(getattr(self.env, "stop_timeout", 0) or 0)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self._waiting_for(runner):
            gevent.sleep(0.02)
        problems = []
        for client_id in sorted(self._participants | set(self._sources)):
            source = self._sources.get(client_id, Source(client_id))
            if source.final is None:
                problems.append(
                    f"worker {source.name}: no final count (it quit or vanished); samples may be lost"
                )
            elif not source.done:
                problems.append(
                    f"worker {source.name}: announced {source.final['rows']} samples in "
                    f"{source.final['batches']} batches, {source.rows} in {source.batches} arrived"
                )
        for problem in problems:
            logger.error("gateload recorder: %s", problem)
        return problems

    def _waiting_for(self, runner: Any) -> list[str]:
        clients = runner.clients
        return [
            cid
            for cid in self._participants | set(self._sources)
            if not self._sources.get(cid, Source(cid)).done
            and cid in clients
            and clients[cid].state != "missing"
        ]

    def _on_cpu_warning(self, **_kw: Any) -> None:
        if self.active:
            self._cpu_warnings += 1
