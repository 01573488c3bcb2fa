"""One headless Locust run as a subprocess, with its progress shown and its result folder checked."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gateload import paths
from gateload.errors import InputError
from gateload.locustfiles.lib.schedule import Plan, plan_from_args

# The locustfile inside the package: a checkout's locustfiles/homeoffice.py, or the installed copy.
LOCUSTFILE = paths.LOCUSTFILE
PROGRESS_PREFIX = "[gateload]"
# Seconds allowed beyond the planned duration for logon, shutdown and writing results.
GRACE_S = 60.0
# Seconds Locust may take to exit once it has written its run folder.
EXIT_GRACE_S = 20.0
RUN_ENDED = re.compile(r"^\S+ run \S+ (completed|interrupted|failed)")
USER_CLASS = "HomeofficeUser"


def passthrough_args(unknown: list[str]) -> list[str]:
    """The options a command passes to Locust, without the ``--`` that separated them.

    ``gateload campaign ... -- --shape step`` is the usual way to say "the rest is Locust's", and
    argparse leaves the ``--`` in the unknown arguments. Handed on, it would make Locust take every
    option after it for a user class name ("Unknown User(s): --step-hold, 5, ..."). Only the first
    one is the separator (argparse's own rule); a later ``--`` is passed on as given.
    """
    args = list(unknown)
    if "--" in args:
        args.remove("--")
    return args


def plan_of(locust_args: list[str]) -> Plan:
    """Read the shape from Locust arguments without importing Locust."""
    return plan_from_args(locust_args)


@dataclass
class LocustRun:
    profile: Path
    results_dir: Path
    label: str
    run_id: str
    processes: int
    extra: list[str]

    @property
    def run_dir(self) -> Path:
        return self.results_dir / self.label / self.run_id

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
        cmd += ["--profile", str(self.profile), "--results-dir", str(self.results_dir)]
        cmd += ["--label", self.label, "--run-id", self.run_id]
        if self.processes > 1:
            # The master must listen on loopback only, on a port no other run is using.
            port = str(free_port())
            cmd += ["--processes", str(self.processes), "--master-bind-host", "127.0.0.1"]
            cmd += ["--master-bind-port", port, "--master-port", port]
        # A campaign measures whole employee sessions unless user classes are named explicitly.
        user_classes = [] if any(a.endswith("User") for a in self.extra) else [USER_CLASS]
        return cmd + list(self.extra) + user_classes

    def run(self) -> Path:
        """Run to the end, echoing progress lines; returns the run folder."""
        deadline = time.monotonic() + plan_of(self.extra).duration_s + GRACE_S
        log_path = self.results_dir / f".{self.label}-{self.run_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                self.command(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                # The user's cwd, as for any Locust run: relative --profile and --results-dir paths and
                # ./locust.conf mean what they meant to the campaign (results land under the user's cwd).
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            follower = _Follower(proc, log)
            try:
                _wait(proc, follower, deadline)
            except KeyboardInterrupt:
                # Locust marks the run interrupted and flushes what it has; give it the time to.
                proc.send_signal(signal.SIGINT)
                _stop(proc, GRACE_S)
                raise
            finally:
                follower.join(timeout=5)
        if self.run_dir.is_dir():
            log_path.replace(self.run_dir / "locust.log")
            log_path = self.run_dir / "locust.log"
        return self._checked(proc.returncode, log_path)

    def _checked(self, returncode: int, log_path: Path) -> Path:
        meta_path = self.run_dir / "meta.json"
        if not meta_path.is_file():
            tail = log_path.read_text().strip().splitlines()[-1:] if log_path.exists() else []
            why = tail[0] if tail else f"exit code {returncode}"
            raise InputError(f"run {self.run_id} produced no results ({why}); see {log_path}")
        status = json.loads(meta_path.read_text()).get("status")
        if status != "completed":
            raise InputError(f"run {self.run_id} ended {status}; its partial results are in {self.run_dir}")
        return self.run_dir


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Follower(threading.Thread):
    """Copies Locust's output to the log; shows progress lines and problems on the console."""

    def __init__(self, proc: subprocess.Popen[str], log: TextIO) -> None:
        super().__init__(daemon=True)
        self.proc, self.log = proc, log
        self.finished = threading.Event()  # the run folder is final: Locust has only to exit
        self.start()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.write(line)
            if line.startswith(PROGRESS_PREFIX) or " ERROR/" in line or "CPU usage" in line:
                print("  " + line.rstrip(), flush=True)
            if line.startswith(PROGRESS_PREFIX) and RUN_ENDED.search(line):
                self.finished.set()


def _wait(proc: subprocess.Popen[str], follower: _Follower, deadline: float) -> None:
    """Wait for Locust to exit; stop it if it overruns its plan or lingers after its run ended."""
    while proc.poll() is None:
        if follower.finished.wait(timeout=0.5):
            if _exited(proc, EXIT_GRACE_S):
                return
            print(f"  Locust did not exit {EXIT_GRACE_S:.0f} s after its run ended; stopping it", flush=True)
            _stop(proc, EXIT_GRACE_S)
            return
        if time.monotonic() > deadline:
            print("  Locust overran its planned duration; stopping it", flush=True)
            _stop(proc, GRACE_S)
            return


def _exited(proc: subprocess.Popen[str], seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def _stop(proc: subprocess.Popen[str], grace: float) -> None:
    """SIGTERM (Locust then writes an interrupted run), SIGKILL if that is not enough."""
    if proc.poll() is None:
        proc.terminate()
        if not _exited(proc, grace):
            proc.kill()
            proc.wait()
