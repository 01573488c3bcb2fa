"""Start a daemon in the foreground as a subprocess, wait for its ports, stop it without leftovers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

# Debian puts daemons in /usr/sbin, which is not on a non-root PATH.
_SBIN_PATH = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])


class MissingTool(RuntimeError):
    """A binary or privilege the launcher needs is not there; tests turn this into a skip."""


def require_binary(name: str, package: str) -> str:
    """The absolute path of ``name``, or :class:`MissingTool` naming the Debian package to install."""
    found = shutil.which(name) or shutil.which(name, path=_SBIN_PATH)
    if not found:
        raise MissingTool(f"{name} not found; install it with `apt-get install -y {package}`")
    return found


def require_root(why: str) -> None:
    """Raise :class:`MissingTool` unless running as root (useradd, sshd privilege separation)."""
    if os.geteuid() != 0:
        raise MissingTool(f"needs root to {why}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the daemon may still lose a race; see Daemon.start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if a TCP connect to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Daemon:
    """One foreground daemon process, its log file, and the ports it must open.

    The process gets its own session (a Ctrl-C in the test's terminal does not reach it half-way), and
    :meth:`stop` signals it and every process it forked (sshd's per-connection children), found from
    its process tree, so nothing else on the machine is touched and nothing is left behind.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        ports: list[tuple[str, int]],
        log_path: Path,
        env: dict[str, str] | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.name = name
        self.argv = argv
        self.ports = ports
        self.log_path = log_path
        self.env = env
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        """Start the process and wait until every port accepts; raise with the log tail if it dies."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        pending = list(self.ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not open {pending} in {self.start_timeout_s}s: {self.log_tail()}"
                )
            if port_accepts(*pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.02)
        return self

    def stop(self) -> None:
        """SIGTERM the daemon and every process it forked, SIGKILL what is left after 5 s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        # sshd's per-connection children call setsid(), so the process group does not reach them:
        # note the descendants before the leader dies and they are re-parented.
        family = [proc.pid, *_descendants(proc.pid)]
        _signal_all(family, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_all(family, signal.SIGKILL)
            proc.wait(timeout=5)
        deadline = time.monotonic() + 5
        while (alive := [p for p in family[1:] if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.02)
        _signal_all(alive, signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the daemon's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_with_retry(make: Callable[[], Daemon], attempts: int = 3) -> Daemon:
    """Build and start a daemon, retrying with fresh ports when it loses a port race."""
    last: Exception | None = None
    for _ in range(attempts):
        daemon = make()
        try:
            return daemon.start()
        except RuntimeError as exc:
            last = exc
            if "in use" not in str(exc).lower() and "cannot bind" not in str(exc).lower():
                raise
    assert last is not None
    raise last


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process tree (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purpose; its parent (us or init) reaps it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class Launcher:
    """A daemon started from a private config: ``start()``/``stop()`` or ``with``; no leftovers.

    Subclasses set ``state_dir`` and implement ``_make_daemon`` (pick ports, write the config,
    return the :class:`Daemon`); :func:`start_with_retry` covers a port taken in between.
    """

    state_dir: Path
    _daemon: Daemon | None = None

    def _make_daemon(self) -> Daemon:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Work before the first start attempt (folders, keys, seed files)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> Self:
        """Start the daemon; returns once its port accepts."""
        self._prepare()
        self._daemon = start_with_retry(self._make_daemon)
        return self

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
