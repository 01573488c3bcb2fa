"""A real xrdp (Debian ``xrdp`` 0.9 with the ``xorgxrdp`` back end) on a loopback port, with stock accounts.

Two foreground daemons from a private folder: ``xrdp-sesman -n -c <dir>/sesman.ini`` (the session
manager: PAM logon, one Xorg + xorgxrdp session per account) and ``xrdp -n -c <dir>/xrdp.ini`` on
127.0.0.1 and a free port. Both configs are Debian's shipped ``/etc/xrdp`` files copied as they are,
with only this instance's port, log files (in the folder, no syslog) changed, and for the relaxed
variant the keys named in :data:`RELAXED_SESMAN`. The TLS certificate is the package's own
(``/etc/xrdp/cert.pem``, made at install), as on a stock server; profiles pin it
(:attr:`Xrdp.cert_fingerprint`).

What cannot be private (xrdp 0.9.21 fixes these paths at build time): xrdp reads the session manager's
port from ``/etc/xrdp/sesman.ini`` (so sesman listens on the shipped port, 3350 on 127.0.0.1 / ::1, and
only one instance runs per machine at a time: :class:`Xrdp` takes an exclusive lock), xrdp writes
``/var/run/xrdp/xrdp.pid`` and both use ``/run/xrdp/sockdir``. Nothing under ``/etc`` is written.

Accounts are stock local accounts (``useradd -m``, Debian's default shell), random passwords per start
(set through ``chpasswd`` on stdin). A session is what Debian starts for an account with no desktop
installed: ``/etc/xrdp/startwm.sh`` -> ``/etc/X11/Xsession``, whose last fallback is
``x-terminal-emulator`` (xterm, from the ``xterm`` package): one xterm on an Xorg display. Sessions
stay after a disconnect (``KillDisconnected=false``, the shipped value) and are stopped with sesman:
every process below the two daemons is signalled, Xorg's lock and socket files are removed.

Two variants:

- production defaults (``relaxed=False``): the shipped files untouched apart from port and logs. xrdp
  listens with a backlog of 2 (``listen(fd, 2)`` in its os_calls, not configurable): connections beyond
  two pending ones wait for the kernel to retry the handshake;
- relaxed (``relaxed=True``): sesman allows 1000 sessions instead of 50
  (:data:`RELAXED_SESMAN`); xrdp's backlog stays 2, so load tests ramp logons (spawn rate) instead.

Usage::

    with Xrdp(tmp / "rdp", accounts=10, relaxed=True) as rdp:
        ...  # rdp.host, rdp.port, rdp.credentials (username,password CSV), rdp.accounts
"""

from __future__ import annotations

import configparser
import contextlib
import csv
import fcntl
import hashlib
import os
import pwd
import re
import secrets
import ssl
import subprocess
from pathlib import Path
from typing import IO, Self

from gateload.targets.local.process import (
    Daemon,
    MissingTool,
    free_port,
    port_accepts,
    require_binary,
    require_root,
)
from gateload.targets.profile import format_cert_sha256

ETC = Path("/etc/xrdp")
CERT = ETC / "cert.pem"  # what xrdp.ini's empty `certificate` means: the package's own, made at install
#: Keys changed for the relaxed variant (sesman.ini [Sessions]). 0 is not "unlimited" in sesman 0.9.21:
#: it refuses every session ("max concurrent session limit exceeded").
RELAXED_SESMAN = {"MaxSessions": "1000"}
USER_PREFIX = "gl-rdp-"
LOCK_PATH = Path("/run/lock/gateload-xrdp.lock")
SOCKDIR = Path("/run/xrdp/sockdir")
START_TIMEOUT_S = 15.0


class Xrdp:
    """xrdp + xrdp-sesman in the foreground from a private folder; ``with`` or ``start()``/``stop()``."""

    def __init__(
        self, state_dir: Path, *, accounts: int = 10, relaxed: bool = False, host: str = "127.0.0.1"
    ):
        self.xrdp = require_binary("xrdp", "xrdp")
        self.sesman = require_binary("xrdp-sesman", "xrdp")
        require_binary("Xorg", "xserver-xorg-core")
        if not Path("/usr/lib/xorg/modules/drivers/xrdpdev_drv.so").exists():
            raise MissingTool(
                "the xorgxrdp back end is missing; install it with `apt-get install -y xorgxrdp`"
            )
        require_binary("x-terminal-emulator", "xterm")
        require_root("start xrdp-sesman (PAM logons, sessions as the accounts) and create accounts")
        if not (ETC / "xrdp.ini").is_file() or not (ETC / "sesman.ini").is_file():
            raise MissingTool(f"{ETC}/xrdp.ini or sesman.ini is missing; reinstall xrdp")
        self.state_dir = state_dir
        self.n_accounts = accounts
        self.relaxed = relaxed
        self.host = host
        self.port = 0
        self.sesman_port = 0
        self.accounts: list[tuple[str, str]] = []
        self._daemons: list[Daemon] = []
        self._lock: IO[str] | None = None

    @property
    def variant(self) -> str:
        return "relaxed" if self.relaxed else "production-defaults"

    @property
    def credentials(self) -> Path:
        """The accounts as a ``username,password`` CSV (owner-only), for a profile's credentials file."""
        return self.state_dir / "credentials.csv"

    @property
    def cert_fingerprint(self) -> str:
        """The SHA-256 fingerprint of the certificate it presents, as a profile's ``cert_fingerprint``."""
        der = ssl.PEM_cert_to_DER_cert(CERT.read_text())
        return format_cert_sha256(hashlib.sha256(der).digest())

    @property
    def log_files(self) -> tuple[Path, Path]:
        return self.state_dir / "xrdp.log", self.state_dir / "sesman.log"

    # --- start / stop -----------------------------------------------------------------------------------

    def start(self) -> Self:
        """Lock, prepare accounts and configs, start sesman then xrdp; returns once both ports accept."""
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(LOCK_PATH, "w")  # noqa: SIM115 - held until stop()
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # one xrdp per machine: the sesman port is fixed
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._make_accounts()
        sesman_ini = self._sesman_config()
        if port_accepts("127.0.0.1", self.sesman_port) or port_accepts("::1", self.sesman_port):
            raise RuntimeError(
                f"port {self.sesman_port} (xrdp-sesman, fixed by /etc/xrdp/sesman.ini) is taken by another "
                "process; stop the xrdp service (`service xrdp stop`)"
            )
        SOCKDIR.mkdir(mode=0o3777, parents=True, exist_ok=True)
        SOCKDIR.chmod(0o3777)  # as Debian's init script makes it: sessions run as the accounts
        sesman = Daemon(
            f"xrdp-sesman {self.variant}",
            [self.sesman, "-n", "-c", str(sesman_ini)],
            [],
            self.state_dir / "sesman.out",
        )
        self._daemons.append(sesman.start())
        _wait_port(sesman, ("::1", "127.0.0.1"), self.sesman_port)
        self.port = free_port(self.host)
        xrdp = Daemon(
            f"xrdp {self.variant}",
            [self.xrdp, "-n", "-c", str(self._xrdp_config())],
            [(self.host, self.port)],
            self.state_dir / "xrdp.out",
            start_timeout_s=START_TIMEOUT_S,
        )
        self._daemons.append(xrdp.start())
        return self

    def stop(self) -> None:
        """Stop xrdp, then sesman with every session below it; remove Xorg's leftovers; unlock."""
        displays = self._session_displays()
        while self._daemons:
            self._daemons.pop().stop()
        for display in displays:
            for leftover in (Path(f"/tmp/.X{display}-lock"), Path(f"/tmp/.X11-unix/X{display}")):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sessions(self) -> int:
        """Xorg sessions sesman is running now (one per logged-on account)."""
        return len(self._session_displays())

    # --- configuration ------------------------------------------------------------------------------------

    def _sesman_config(self) -> Path:
        shipped = _read_ini(ETC / "sesman.ini")
        self.sesman_port = int(shipped.get("Globals", "ListenPort", fallback="3350"))
        text = (ETC / "sesman.ini").read_text()
        text = _set_key(text, "Logging", "LogFile", str(self.state_dir / "sesman.log"))
        text = _set_key(text, "Logging", "EnableSyslog", "false")
        text = _set_key(text, "ChansrvLogging", "EnableSyslog", "false")
        if self.relaxed:
            for key, value in RELAXED_SESMAN.items():
                text = _set_key(text, "Sessions", key, value)
        path = self.state_dir / "sesman.ini"
        path.write_text(text)
        return path

    def _xrdp_config(self) -> Path:
        text = (ETC / "xrdp.ini").read_text()
        text = _set_key(text, "Globals", "port", f"tcp://{self.host}:{self.port}")
        text = _set_key(text, "Logging", "LogFile", str(self.state_dir / "xrdp.log"))
        text = _set_key(text, "Logging", "EnableSyslog", "false")
        path = self.state_dir / "xrdp.ini"
        path.write_text(text)
        return path

    def _make_accounts(self) -> None:
        """Stock accounts ``gl-rdp-NNN`` (``useradd -m``), a fresh random password each start, and the CSV."""
        require_binary("useradd", "passwd")
        self.accounts = []
        for i in range(self.n_accounts):
            name = f"{USER_PREFIX}{i:03d}"
            try:
                pwd.getpwnam(name)
            except KeyError:
                subprocess.run(["useradd", "--create-home", name], check=True, capture_output=True)
            self.accounts.append((name, secrets.token_urlsafe(12)))
        # The passwords go on stdin, never on a command line that `ps` would show.
        lines = "".join(f"{n}:{p}\n" for n, p in self.accounts)
        subprocess.run(["chpasswd"], input=lines.encode(), check=True, capture_output=True)
        with contextlib.suppress(FileNotFoundError):
            self.credentials.unlink()
        fd = os.open(self.credentials, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["username", "password"])
            writer.writerows(self.accounts)

    def _session_displays(self) -> list[int]:
        """Display numbers of the Xorg servers below our sesman."""
        if not self._daemons or self._daemons[0].proc is None:
            return []
        from gateload.targets.local.process import _descendants

        found = []
        for pid in _descendants(self._daemons[0].proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"Xorg") and len(argv) > 1 and argv[1].startswith(b":"):
                found.append(int(argv[1][1:]))
        return found


def _read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=(";", "#"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def _set_key(text: str, section: str, key: str, value: str) -> str:
    """``key=value`` in ``[section]`` of an ini text: the first uncommented line replaced, else appended
    right after the section header. Comments and the rest of the file stay as shipped."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == f"[{section}]"), None)
    if start is None:
        return text.rstrip("\n") + f"\n\n[{section}]\n{key}={value}\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for i in range(start + 1, end):
        if pattern.match(lines[i]):
            lines[i] = f"{key}={value}"
            return "\n".join(lines) + "\n"
    lines.insert(start + 1, f"{key}={value}")
    return "\n".join(lines) + "\n"


def _wait_port(daemon: Daemon, hosts: tuple[str, ...], port: int) -> None:
    """Wait until ``port`` accepts on one of ``hosts`` (sesman picks ::1 or 127.0.0.1 for "127.0.0.1")."""
    import time

    deadline = time.monotonic() + START_TIMEOUT_S
    while not any(port_accepts(h, port) for h in hosts):
        if not daemon.running:
            raise RuntimeError(f"{daemon.name} exited: {daemon.log_tail()}")
        if time.monotonic() > deadline:
            daemon.stop()
            raise RuntimeError(
                f"{daemon.name} did not open port {port} in {START_TIMEOUT_S}s: {daemon.log_tail()}"
            )
        time.sleep(0.02)
