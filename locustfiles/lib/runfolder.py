"""The run folder ``<results-dir>/<label>/<run-id>/``: one per test start, with meta.json and Locust's files.

:func:`attach` (called from the locustfile's ``init`` listener) checks gateload's options (a bad one:
one line on stderr, exit code 2, before any test starts), installs the load shape and the recorder,
and follows the test's life:

- ``test_start``: a new run folder, meta.json with ``status = "running"``, Locust's CSV writer into the
  folder, the arrival schedule (arrivals shape). Every start in the web UI is a new run.
- every phase change: meta.json rewritten with the steps so far (a killed run keeps its schedule).
- ``test_stop``: all samples written (on a master: every worker's last batch received), then Locust's
  CSV and HTML report, and meta.json with ``completed``, ``interrupted`` (Ctrl-C, SIGTERM or quit
  while the run was going, or stopped before its planned end) or ``failed`` (samples went missing).
  A ``failed`` run, or an ``interrupted`` headless one, makes Locust exit 1 even without request errors.

Workers only record and send (see ``recorder.py``); the master or local runner owns the folder.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
from locust import stats as locust_stats
from locust.html import get_html_report

from gateload.analysis.schema import write_meta
from gateload.errors import InputError
from gateload.locustfiles.lib import arrivals, gcfreeze, interrupt, memtrim, options, runinfo
from gateload.locustfiles.lib.accounts import check_accounts
from gateload.locustfiles.lib.recorder import Recorder, RecordResult, role_of
from gateload.locustfiles.lib.schedule import Phase, Plan
from gateload.locustfiles.lib.shapes import PlannedShape
from gateload.targets.profile import CREDENTIALS_ENV

logger = logging.getLogger(__name__)

PROGRESS = "[gateload]"  # lines the campaign shows on the console
RUN_INFO = "gateload_run"  # parsed_options attribute the master sends to workers with every spawn
RUN_TIME_SLACK_S = 1.0  # a -t run stopped this close to its end has reached it
STATUS_EVERY_S = 10.0  # how often the console shows sessions, ops/s and errors
QUIT_FLUSH_S = 10.0  # a quitting worker waits this long at most for its final count to go out


def progress(text: str) -> None:
    # One write per line: the asyncio thread logs to the same pipe, and must not split our line.
    sys.stdout.write(f"{PROGRESS} {text}\n")
    sys.stdout.flush()


@dataclass
class ActiveRun:
    run_id: str
    run_dir: Path
    resolved: options.RunOptions
    started_at: float
    processes: int
    steps: list[dict[str, Any]] = field(default_factory=list)  # shape "none" only
    interrupted: bool = False
    arrivals: dict[str, Any] | None = None  # arrivals shape: planned vs handed out, at the end
    csv_writer: Any = None
    csv_greenlet: gevent.Greenlet | None = None
    monitor: gevent.Greenlet | None = None
    status_greenlet: gevent.Greenlet | None = None


class RunController:
    """Owns this process's run folders; one per Locust process."""

    def __init__(self, environment: Any, web_ui: Any = None) -> None:
        self.env = environment
        self.role = role_of(environment.runner)
        self.web_ui = web_ui
        self.recorder = Recorder(environment)
        self.shape = PlannedShape(on_phase=self._on_phase)
        self.shape.runner = environment.runner
        self.static = runinfo.static_info() if self.role != "worker" else {}
        self.resolved: options.RunOptions | None = None
        self.run: ActiveRun | None = None
        self.last_run_dir: Path | None = None

    # --- set-up -----------------------------------------------------------------------------------

    def attach(self) -> None:
        """Check the options, install the shape and the listeners; exit 2 on bad input (not on workers)."""
        if self.role != "worker":
            try:
                self.resolved = options.resolve(self.env.parsed_options)
                if self.web_ui is None:
                    self._require_profile(self.resolved)
            except InputError as exc:
                sys.stderr.write(f"gateload: error: {exc}\n")
                sys.stderr.flush()
                self._stop_forked_workers()
                raise SystemExit(2) from None
            self._install_shape(self.resolved.plan)
            self._warn_if_master_is_exposed()
        memtrim.keep_trimmed(self.env)
        gcfreeze.install(self.env)
        interrupt.install()
        events = self.env.events
        events.test_start.add_listener(self._on_test_start)
        events.test_stop.add_listener(self._on_test_stop)
        events.quitting.add_listener(self._on_quitting)
        events.spawning_complete.add_listener(self._on_spawning_complete)
        if self.web_ui is not None:
            self._install_web_check(self.web_ui)

    def _stop_forked_workers(self) -> None:
        """``--processes`` forks the workers before this check runs, and Locust's exit leaves them waiting
        60 s for the master's heartbeat (its atexit reaper takes a running child for a finished one)."""
        if self.role != "master" or not getattr(self.env.parsed_options, "processes", None):
            return
        import psutil

        for child in psutil.Process().children():
            try:
                child.terminate()
            except psutil.Error:
                continue

    def _warn_if_master_is_exposed(self) -> None:
        host = getattr(self.env.parsed_options, "master_bind_host", "127.0.0.1")
        if self.role == "master" and host in ("*", "", "0.0.0.0", "::"):
            logger.warning(
                "gateload: the Locust master listens on all interfaces; "
                "pass --master-bind-host 127.0.0.1 (and a free --master-bind-port) to keep it on loopback"
            )

    def _require_profile(self, resolved: options.RunOptions, workers: int | None = None) -> None:
        # gateload's user classes and a user's own subclasses of them (gateload.users) need a profile.
        needing = sorted(
            u.__name__
            for u in self.env.user_classes
            if any(c.__module__.startswith("gateload.locustfiles.lib") for c in u.__mro__)
        )
        if resolved.profile is not None:
            if needing:  # the users read the credentials file at spawn: a bad one must stop us here
                from gateload.locustfiles.lib.runtime import load_accounts

                path = resolved.profile.credentials_path
                count = len(load_accounts(path))
                # every running user holds its own account (accounts.py): the peak must fit each share
                plan, farm = resolved.plan, resolved.profile.farm
                lower = "--step-users" if plan.shape == "step" else "-u"
                own_file = os.environ.get(CREDENTIALS_ENV)  # the farm's accounts are not the ones in use
                add = "raise farm.accounts in the profile" if farm and not own_file else "add accounts"
                shares = workers or self._account_shares()
                per_account = resolved.users_per_account
                check_accounts(
                    plan.peak_users, count, shares, str(path), per_account=per_account, lower=lower, add=add
                )
            return
        if needing:
            raise InputError(
                f"{', '.join(needing)} need a target profile: "
                "pass --profile targets/profiles/reference-before.toml"
            )

    def _account_shares(self) -> int:
        """Processes the accounts are split between: workers connected (web UI) or expected (headless)."""
        if self.role != "master":
            return 1
        connected = len(self._workers())
        if self.web_ui is not None and connected:
            return connected
        return max(connected, int(getattr(self.env.parsed_options, "expect_workers", 1) or 1), 1)

    def _check_shares_at_start(self, resolved: options.RunOptions, workers: int) -> None:
        """The workers taking part may not be those checked before the start: say if accounts fall short."""
        if resolved.profile is None:
            return
        try:
            self._require_profile(resolved, workers)
        except InputError as exc:
            logger.error(
                "gateload: %s; users will share accounts and a per-account limit may refuse them", exc
            )

    def _install_shape(self, plan: Plan) -> None:
        self.env.shape_class = None if plan.shape == "none" else self.shape
        self.shape.plan = plan

    def _install_web_check(self, web_ui: Any) -> None:
        """Check a web UI start form before Locust acts on it; choose the shape it asks for."""
        from flask import jsonify, request

        @web_ui.app.before_request
        def _check_swarm() -> Any:
            if request.method != "POST" or not request.path.endswith("/swarm"):
                return None
            try:
                merged = options.with_form(self.env.parsed_options, request.form)
                resolved = options.resolve(merged, check_existing=False)
                self._require_profile(resolved)
            except InputError as exc:
                logger.error("gateload: %s", exc)
                return jsonify({"success": False, "message": str(exc), "host": self.env.host})
            if self.run is None:  # a running test is being edited: its shape stays
                self._install_shape(resolved.plan)
            return None

    # --- test_start -------------------------------------------------------------------------------

    def _on_test_start(self, environment: Any, **_kw: Any) -> None:
        if self.role == "worker":
            self._start_worker()
            return
        resolved = self._resolve_now()
        run_id, run_dir = options.unique_run_dir(resolved, resolved.run_id or options.new_run_id())
        run_dir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        participants = self._workers() if self.role == "master" else set()
        run = ActiveRun(run_id, run_dir, resolved, started, max(1, len(participants)))
        self.run, self.last_run_dir = run, run_dir
        if self.role == "master":
            slots = {cid: i for i, cid in enumerate(sorted(participants))}
            # Locust sends only custom options to workers; --profile is Locust's own, so it rides along.
            profile = options.profile_path(environment.parsed_options)
            info = {"id": run_id, "t0": started, "slots": slots, "profile": profile}
            setattr(environment.parsed_options, RUN_INFO, info)
            self._check_shares_at_start(resolved, len(slots))
        self._install_arrivals(resolved.plan, started, 0, 1)
        self.recorder.start(run_id, run_dir, participants)
        if resolved.plan.shape == "none":
            runner = environment.runner
            self._begin_step(run, runner.target_user_count or resolved.plan.peak_users, started)
            run.monitor = gevent.spawn(self._follow_user_count, run)
        self._start_csv(run)
        self._write_meta(run, "running")
        progress(f"run {resolved.label}/{run_id} started ({resolved.plan.describe()}): {run_dir}")
        run.status_greenlet = gevent.spawn(self._report_status, run)

    def _resolve_now(self) -> options.RunOptions:
        """The options as they are now (the web UI may have changed them since init)."""
        try:
            return options.resolve(self.env.parsed_options, check_existing=False)
        except InputError as exc:  # checked before the start; only a bug gets here
            logger.error("gateload: %s; recording with the options given at start-up", exc)
            assert self.resolved is not None
            return self.resolved

    def _start_worker(self) -> None:
        info = getattr(self.env.parsed_options, RUN_INFO, None) or {}
        run_id = str(info.get("id") or "unknown")
        if info.get("profile") and not options.profile_path(self.env.parsed_options):
            self.env.parsed_options.profile = info["profile"]  # a worker started without --profile
        plan = None
        try:
            plan = options.build_plan(self.env.parsed_options)
        except InputError as exc:
            logger.error("gateload: %s", exc)
        if plan is not None and info:
            slots = info.get("slots") or {}
            slot = slots.get(self.env.runner.client_id, max(0, self.env.runner.worker_index))
            self._install_arrivals(plan, float(info["t0"]), slot, max(1, len(slots)))
        self.recorder.start(run_id, slots=max(1, len(info.get("slots") or {})))

    def _install_arrivals(self, plan: Plan, t0: float, slot: int, slots: int) -> None:
        schedule = None
        if plan.shape == "arrivals":
            schedule = arrivals.ArrivalSchedule(t0, plan.arrival_rate, slot % slots, slots)
        arrivals.install(self.env, schedule)

    def _workers(self) -> set[str]:
        clients = self.env.runner.clients
        return {c.id for c in clients.ready + clients.spawning + clients.running}

    # --- during the run ---------------------------------------------------------------------------

    def _on_phase(self, index: int, phase: Phase, shape: PlannedShape) -> None:
        if self.role == "worker":
            return
        total = len(shape.plan.phases) if shape.plan else 0
        hold = phase.duration_s - phase.ramp_s
        held = "to the end of the run" if math.isinf(hold) else f"{hold:.3g} s"
        progress(
            f"step {index + 1}/{total} {phase.name}: {phase.users} users at {phase.spawn_rate:.3g}/s, "
            f"ramp {phase.ramp_s:.3g} s, hold {held}"
        )
        if self.run is not None:
            self._write_meta(self.run, "running")

    def _on_spawning_complete(self, user_count: int = 0, **_kw: Any) -> None:
        if self.run is None:
            return
        now = time.time()
        steps = self.run.steps if self.env.shape_class is None else self.shape.steps
        if steps and steps[-1].get("spawned") is None:
            steps[-1]["spawned"] = now

    def _begin_step(self, run: ActiveRun, users: int, now: float) -> None:
        if run.steps and run.steps[-1]["end"] is None:
            run.steps[-1]["end"] = now
        rate = getattr(self.env.parsed_options, "spawn_rate", None)
        run.steps.append(
            {
                "index": len(run.steps),
                "start": now,
                "end": None,
                "users": int(users),
                "spawn_rate": rate,
                "spawned": None,
            }
        )

    def _report_status(self, run: ActiveRun) -> None:
        """Every STATUS_EVERY_S: step, sessions, ops/s and errors over the interval (exact deltas)."""
        total = self.env.runner.stats.total
        last_t, last_n, last_f = time.time(), total.num_requests, total.num_failures
        while self.run is run:
            gevent.sleep(STATUS_EVERY_S)
            if self.run is not run:
                return
            now, n, f = time.time(), total.num_requests, total.num_failures
            ops, errors = n - last_n, f - last_f
            steps = run.steps if self.env.shape_class is None else self.shape.steps
            step = f"step {len(steps)}/{len(run.resolved.plan.phases)} " if steps else ""
            progress(
                f"t={now - run.started_at:.0f}s {step}sessions={self.env.runner.user_count} "
                f"ops/s={ops / (now - last_t):.1f} errors={errors} ({errors / max(ops, 1):.1%})"
            )
            last_t, last_n, last_f = now, n, f

    def _follow_user_count(self, run: ActiveRun) -> None:
        """Shape none: a new step whenever the target user count changes (web UI edits, w/W/s/S keys)."""
        runner = self.env.runner
        while self.run is run:
            gevent.sleep(0.5)
            target = runner.target_user_count
            if self.run is run and target and run.steps and target != run.steps[-1]["users"]:
                self._begin_step(run, target, time.time())

    def _start_csv(self, run: ActiveRun) -> None:
        try:
            writer = locust_stats.StatsCSVFileWriter(
                self.env, locust_stats.PERCENTILES_TO_REPORT, str(run.run_dir / "locust"), full_history=False
            )
        except OSError as exc:
            logger.error("gateload: cannot write Locust's CSV files into %s: %s", run.run_dir, exc)
            return
        run.csv_writer = writer
        run.csv_greenlet = gevent.spawn(writer.stats_writer)

    # --- test_stop --------------------------------------------------------------------------------

    def _on_quitting(self, environment: Any, **_kw: Any) -> None:
        """Ctrl-C, SIGTERM or quit: a run still going is interrupted (test_stop follows)."""
        if self.role == "worker":
            # Flush before Locust tells the master this worker quit: the master stops waiting for a
            # worker's final count once it has quit. When the master's own Ctrl-C asked for the flush
            # first, runner.stop() is already under way in another greenlet and returns at once, so
            # finish here, or wait until that greenlet has sent the final count.
            if self.recorder.active:
                environment.runner.stop()
            if self.recorder.active:
                self._on_test_stop(environment)
            self.recorder.wait_sent(QUIT_FLUSH_S)
            return
        if self.run is not None:
            self.run.interrupted = True
            self._set_exit_code("interrupted")  # Locust picks its exit code before test_stop fires

    def _on_test_stop(self, environment: Any, **_kw: Any) -> None:
        if self.role == "worker":
            schedule = arrivals.schedule_of(environment)
            stopped = time.time()
            claimed = schedule.claimed_by(stopped) if schedule else 0
            self.recorder.finish(extra={"arrivals_claimed": claimed, "arrivals_stopped_at": stopped})
            return
        run, self.run = self.run, None
        if run is None:
            return
        ended = time.time()  # the load stops now; collecting the last samples may take a moment
        result = self.recorder.finish()
        for greenlet in (run.monitor, run.status_greenlet):
            if greenlet is not None:
                greenlet.kill(block=False)
        run.arrivals = self._arrivals_summary(run, result, ended)
        arrivals.install(self.env, None)
        self._finish_csv(run)
        self._write_html(run)
        status = self._status(run, result, ended)
        self._write_meta(run, status, result=result, ended=ended)
        self._set_exit_code(status)
        locust = environment.runner.stats.total
        progress(
            f"run {run.resolved.label}/{run.run_id} {status}: {result.rows} samples, "
            f"{locust.num_failures} failures: {run.run_dir}"
        )
        for problem in result.problems:
            progress(f"problem: {problem}")
        if run.arrivals and run.arrivals["claimed"] < 0.95 * run.arrivals["planned"]:
            progress(
                f"only {run.arrivals['claimed']} of {run.arrivals['planned']} planned session arrivals found "
                "a free user: the pool (-u) was too small for the arrival rate, so the storm fell short"
            )

    def _set_exit_code(self, status: str) -> None:
        """A run that lost samples, or a headless run cut short, must not exit 0 to a CI pipeline.

        Locust decides its exit code from request errors only, so a worker killed mid-run would
        otherwise pass unnoticed. In the web UI a stopped run is the user's choice, not a failure.
        """
        headless = bool(getattr(self.env.parsed_options, "headless", False))
        if status == "failed" or (status == "interrupted" and headless):
            self.env.process_exit_code = max(self.env.process_exit_code or 0, 1)

    def _arrivals_summary(self, run: ActiveRun, result: RecordResult, ended: float) -> dict[str, Any] | None:
        plan = run.resolved.plan
        if plan.shape != "arrivals":
            return None
        finals = [w.get("final") or {} for w in result.workers.values()]
        local = arrivals.schedule_of(self.env) if self.role == "local" else None
        return arrivals.summary(run.started_at, plan.arrival_rate, ended, finals, local)

    def _status(self, run: ActiveRun, result: RecordResult, ended: float) -> str:
        if run.interrupted:
            return "interrupted"
        if not result.complete:
            return "failed"
        plan = run.resolved.plan
        if self.env.shape_class is not None:
            return "completed" if self.shape.finished else "interrupted"
        if plan.run_time_s is not None and ended - run.started_at < plan.run_time_s - RUN_TIME_SLACK_S:
            return "interrupted"
        return "completed"

    def _finish_csv(self, run: ActiveRun) -> None:
        writer = run.csv_writer
        if writer is None:
            return
        if run.csv_greenlet is not None:
            run.csv_greenlet.kill(block=True)
        try:
            # The periodic writer may be up to a second behind: write the final totals once more.
            for handle, write in (
                (writer.requests_csv_filehandle, writer.requests_csv),
                (writer.failures_csv_filehandle, writer.failures_csv),
                (writer.exceptions_csv_filehandle, writer.exceptions_csv),
            ):
                handle.seek(0)
                handle.truncate()
                write(csv.writer(handle))
            history = csv.writer(writer.stats_history_csv_filehandle)
            if writer.stats_history_csv_filehandle.tell() == 0:
                history.writerow(writer.stats_history_csv_columns)
            writer._stats_history_data_rows(history, time.time())
        except (OSError, AttributeError) as exc:
            logger.error("gateload: finishing Locust's CSV files failed: %s", exc)
        finally:
            writer.close_files()

    def _write_html(self, run: ActiveRun) -> None:
        try:
            html = get_html_report(self.env, show_download_link=False)
            (run.run_dir / "locust_report.html").write_text(html, encoding="utf-8")
        except Exception as exc:  # the report is a convenience; the samples matter
            logger.error("gateload: writing Locust's HTML report failed: %s", exc)

    # --- meta.json --------------------------------------------------------------------------------

    def _write_meta(
        self, run: ActiveRun, status: str, *, result: RecordResult | None = None, ended: float | None = None
    ) -> None:
        resolved, plan, profile = run.resolved, run.resolved.plan, run.resolved.profile
        runner = self.env.runner
        source = self.shape.steps if self.env.shape_class is not None else run.steps
        steps = [dict(step) for step in source]
        if ended is not None and steps and steps[-1]["end"] is None:
            steps[-1]["end"] = ended
        total = runner.stats.total
        operations = runinfo.catalogue(self.env.user_classes, profile)
        meta = {
            "run_id": run.run_id,
            "label": resolved.label,
            "status": status,
            "completed": status == "completed",
            "started_at": run.started_at,
            "ended_at": ended,
            "profile": runinfo.profile_meta(profile),
            "shape": {"name": plan.shape, "params": plan.params},
            "steps": steps,
            "paced": runinfo.paced(profile, plan, operations),
            "catalogue": operations.to_json() if operations is not None else None,
            "arrivals": run.arrivals,
            "think_time_s": runinfo.think_time_s(profile),
            "args": runinfo.sanitize_args(self.env.parsed_options, options.SECRET_DESTS),
            **self.static,
            "processes": run.processes,
            "sample_count": result.rows if result else None,
            "locust": {
                "requests": total.num_requests,
                "failures": total.num_failures,
                "cpu_warnings": result.cpu_warnings if result else 0,
                "cpu_warning_emitted": bool(
                    runner.cpu_warning_emitted or getattr(runner, "worker_cpu_warning_emitted", False)
                ),
            },
            "generator_pauses": result.pauses if result else [],
            "security": runinfo.security(profile),
            "recorder": None
            if result is None
            else {
                "complete": result.complete,
                "problems": result.problems,
                "batches": result.batches,
                "workers": result.workers,
                "dropped_outside_run": result.dropped,
            },
        }
        try:
            write_meta(run.run_dir, meta)
        except OSError as exc:
            logger.error("gateload: writing %s/meta.json failed: %s", run.run_dir, exc)


def attach(environment: Any, web_ui: Any = None) -> RunController:
    """Set gateload up on a Locust environment (from the ``init`` event); exits 2 on bad options."""
    controller = RunController(environment, web_ui)
    controller.attach()
    environment.gateload = controller
    return controller
