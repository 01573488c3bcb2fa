"""A real OpenSSH sshd on a loopback port, configured from a private folder, with stock accounts.

What it offers is what the GatewayUser needs from a real gateway, set up the way an administrator
would: a local account made by ``useradd -m`` from ``/etc/skel`` with one of the distribution's shells
(``/bin/sh`` = dash, ``/bin/bash``, ``/usr/bin/zsh``) and its default prompt, password and public-key
auth, the distribution's ``sftp-server`` starting in the account's home (which holds the documents),
``direct-tcpip`` only to the services named in ``permit_open``, and no helper scripts or prompt
settings for the harness. What the local "farm" adds is backend attribution the way the reference
farm does it: the pre-auth banner ``gateload-server: <id>`` and ``GATELOAD_SERVER=<id>`` in sessions.

Usage::

    keys = SshKeys.generate(tmp)
    with Sshd(keys, tmp / "gw-01", server_id="gw-01", permit_open=[("127.0.0.1", 8080)]) as sshd:
        ...  # sshd.host, sshd.port, sshd.user.name, sshd.user.password, keys.client_key
    with Sshd(keys, tmp / "gw-bash", shell="/bin/bash") as sshd:  # the stock bash account
        ...
    with Sshd(keys, tmp / "gw-load", relaxed=True) as sshd:  # limits raised for a logon storm
        ...

Limits are OpenSSH's production defaults (:data:`PRODUCTION_DEFAULTS`) unless ``relaxed`` asks for
:data:`RELAXED`; a connection turned away by ``MaxStartups`` is the error class ``throttled``.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import random
import re
import secrets
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from gateload.targets.local.process import (
    Daemon,
    Launcher,
    MissingTool,
    free_port,
    require_binary,
    require_root,
)

#: OpenSSH's own limits, which Debian's sshd_config leaves as they are (sshd_config(5)): from 10
#: connections still logging on, 30 % of new ones are turned away, all of them from 100.
PRODUCTION_DEFAULTS = {"MaxStartups": "10:30:100", "MaxSessions": "10", "LoginGraceTime": "120"}
#: The "relaxed" variant for load tests: a logon storm of hundreds of users is let in.
RELAXED = {"MaxStartups": "200:30:400", "MaxSessions": "64", "LoginGraceTime": "120"}

TEST_USER = "gateload-test"
#: The stock test account for each login shell the tests use (TEST_USER is the /bin/sh one).
USERS_BY_SHELL = {"/bin/sh": TEST_USER, "/bin/bash": "gateload-bash", "/usr/bin/zsh": "gateload-zsh"}
# Root-only file holding a test user's password, so concurrent test runs on one machine agree on it.
SECRET_DIR = Path("/var/lib/gateload")
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it (privilege separation)
SKEL_DIR = Path("/etc/skel")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")  # Debian's default `Subsystem sftp`
# Uploads land in the shared home; ones older than this are left over from finished runs.
STALE_UPLOAD_S = 3600.0
# What the previous version of this module wrote as ~/.profile: replaced by the skeleton's.
_LEGACY_PROFILE_MARK = "GATELOAD_BIN"


@dataclass(frozen=True)
class TestUser:
    """The dedicated local account the gateway tests log in as."""

    __test__ = False  # not a pytest test class

    name: str
    password: str
    home: Path
    uid: int
    gid: int


def ensure_test_user(name: str = TEST_USER, shell: str = "/bin/sh") -> TestUser:
    """Create the stock test account if missing (``useradd -m``: home from /etc/skel) and set its password.

    The account is what an administrator would make: the given login shell, the skeleton's dot files,
    the distribution's default prompt; the harness copes with that, nothing is adapted to it. The
    password is random per machine, kept in a root-only file and set again on every call, so parallel
    test runs agree on it and a changed password heals itself. An account left by an older version
    of this module (no skeleton, a harness ``.profile``) gets the skeleton's files back. Needs root.
    """
    require_root("create the test user and set its password")
    require_binary("useradd", "passwd")
    if not os.access(shell, os.X_OK):
        raise MissingTool(f"login shell {shell} not found; install it (e.g. `apt-get install -y zsh`)")
    SECRET_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(SECRET_DIR / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(
                ["useradd", "--create-home", "--shell", shell, name], check=True, capture_output=True
            )
            entry = pwd.getpwnam(name)
        if entry.pw_shell != shell:
            subprocess.run(["usermod", "--shell", shell, name], check=True, capture_output=True)
        home = Path(entry.pw_dir)
        _restore_skeleton(home, entry.pw_uid, entry.pw_gid)
        _remove_stale_uploads(home)
        password = _stored_password(SECRET_DIR / f"{name}.secret")
        # The password goes on stdin, never on a command line that `ps` would show.
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True, capture_output=True)
        return TestUser(name, password, home, entry.pw_uid, entry.pw_gid)


def _restore_skeleton(home: Path, uid: int, gid: int) -> None:
    """Give the home what ``useradd -m`` would have: missing skeleton files, no harness ``.profile``."""
    if not home.is_dir():
        home.mkdir(mode=0o755, parents=True)
        os.chown(home, uid, gid)
    profile = home / ".profile"
    if profile.is_file() and _LEGACY_PROFILE_MARK in profile.read_text(errors="replace"):
        profile.unlink()
    if not SKEL_DIR.is_dir():
        return
    for src in SKEL_DIR.iterdir():
        dst = home / src.name
        if src.is_file() and not dst.exists():
            shutil.copy2(src, dst)
            os.chown(dst, uid, gid)


def _remove_stale_uploads(home: Path) -> None:
    """Uploads of finished runs (``upload-*`` older than an hour); a running test's are younger."""
    cutoff = time.time() - STALE_UPLOAD_S
    for path in home.glob("upload-*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass  # another run removed it first


def seed_document(folder: Path, name: str, size: int, uid: int, gid: int) -> Path:
    """Write a document of ``size`` bytes into ``folder`` as the account's own file.

    The content depends only on name and size and the file is replaced atomically, so concurrent
    test runs seeding the same home never show a reader a half-written or different document.
    """
    data = random.Random(f"{name}:{size}").randbytes(size)
    target = folder / name
    if target.is_file() and target.stat().st_size == size and target.read_bytes() == data:
        return target
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    os.chown(tmp, uid, gid)
    os.replace(tmp, target)
    return target


def _stored_password(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


def _make_traversable(folder: Path) -> None:
    """Add search permission for others (o+x) to every ancestor lacking it; never removes bits."""
    for parent in folder.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def openssh_version(binary: str) -> tuple[int, int]:
    """(major, minor) of an sshd binary, from ``sshd -V`` (e.g. "OpenSSH_9.2p1 ..." -> (9, 2))."""
    out = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stderr + out.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


@dataclass(frozen=True)
class SshKeys:
    """Host key (shared by every sshd of one farm, so clients pin one key) and the client's key."""

    host_key: Path
    host_key_pub: Path
    client_key: Path
    client_key_pub: Path

    @classmethod
    def generate(cls, folder: Path) -> SshKeys:
        """Generate fresh ed25519 keys for this run into ``folder`` (private keys mode 0600)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for role in ("ssh_host_ed25519_key", "client_ed25519_key"):
            key = asyncssh.generate_private_key("ssh-ed25519", comment=f"gateload {role}")
            private = folder / role
            key.write_private_key(str(private), format_name="openssh")
            private.chmod(0o600)
            key.write_public_key(str(private) + ".pub")
            paths[role] = private
        host, client = paths["ssh_host_ed25519_key"], paths["client_ed25519_key"]
        return cls(host, Path(f"{host}.pub"), client, Path(f"{client}.pub"))


class Sshd(Launcher):
    """A foreground ``sshd -D -e -f <private config>`` on 127.0.0.1 and a free port.

    ``shell`` picks the stock account (:data:`USERS_BY_SHELL`) unless ``user`` names one. The config is
    Debian's default where it matters to a client (ed25519 host key, password and public-key auth,
    the distribution's sftp-server, PTYs) plus one ``PermitOpen`` and the attribution banner.
    """

    def __init__(
        self,
        keys: SshKeys,
        state_dir: Path,
        *,
        server_id: str = "gw-01",
        permit_open: list[tuple[str, int]] | None = None,
        documents: dict[str, int] | None = None,
        user: str | None = None,
        shell: str = "/bin/sh",
        host: str = "127.0.0.1",
        relaxed: bool = False,
    ) -> None:
        self.binary = require_binary("sshd", "openssh-server")
        require_root("run sshd with privilege separation")
        self.keys = keys
        self.state_dir = state_dir
        self.server_id = server_id
        self.permit_open = permit_open or []
        self.documents = documents or {}
        self.user = ensure_test_user(user or USERS_BY_SHELL.get(shell, TEST_USER), shell)
        self.host = host
        self.port = 0
        self.relaxed = relaxed
        self.limits = RELAXED if relaxed else PRODUCTION_DEFAULTS
        # Where the SFTP session starts (sftp-server's default, the home): the documents live there.
        self.sftp_dir = self.user.home
        self._daemon: Daemon | None = None

    @property
    def daemon(self) -> Daemon | None:
        return self._daemon

    def _prepare(self) -> None:
        """Write the state folder, seed the documents; sshd needs its privilege-separation dir."""
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self._prepare_state()

    def _make_daemon(self) -> Daemon:
        self.port = free_port(self.host)
        config = self.state_dir / "sshd_config"
        config.write_text(self.config_text())
        # Check the config first: a typo then fails with sshd's own message, not a port time-out.
        subprocess.run([self.binary, "-t", "-f", str(config)], check=True, capture_output=True)
        argv = [self.binary, "-D", "-e", "-f", str(config)]
        return Daemon(f"sshd {self.server_id}", argv, [(self.host, self.port)], self.state_dir / "sshd.log")

    def _prepare_state(self) -> None:
        """Folders readable by the test user (sshd reads authorized_keys as that user)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)
        _make_traversable(self.state_dir)
        (self.state_dir / "banner").write_text(f"gateload-server: {self.server_id}\n")
        keys_dir = self.state_dir / "authorized_keys"
        keys_dir.mkdir(mode=0o755, exist_ok=True)
        (keys_dir / self.user.name).write_text(self.keys.client_key_pub.read_text())
        for name, size in self.documents.items():
            seed_document(self.sftp_dir, name, size, self.user.uid, self.user.gid)

    def config_text(self) -> str:
        """The private sshd_config; nothing from /etc/ssh/sshd_config is read."""
        permit = " ".join(f"{h}:{p}" for h, p in self.permit_open) or "none"
        forwarding = "local" if self.permit_open else "no"
        sftp = str(SFTP_SERVER) if os.access(SFTP_SERVER, os.X_OK) else "internal-sftp"
        return f"""\
# Written by targets/local/sshd.py for one test run; removed with its folder.
Port {self.port}
ListenAddress {self.host}
HostKey {self.keys.host_key}
PidFile none
# As Debian ships it: passwords checked and sessions opened through PAM (/etc/pam.d/sshd).
UsePAM yes
AllowUsers {self.user.name}
PermitRootLogin no
PasswordAuthentication yes
PermitEmptyPasswords no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
# The run's client key in the run folder, so runs never pile keys into ~/.ssh/authorized_keys.
AuthorizedKeysFile .ssh/authorized_keys {self.state_dir / "authorized_keys"}/%u
# That folder lives under /tmp (mode 1777), which StrictModes would reject.
StrictModes no
AllowTcpForwarding {forwarding}
PermitOpen {permit}
GatewayPorts no
X11Forwarding no
AllowAgentForwarding no
PermitTunnel no
PermitTTY yes
AcceptEnv LANG LC_*
Subsystem sftp {sftp}
Banner {self.state_dir / "banner"}
SetEnv GATELOAD_SERVER={self.server_id}
PrintMotd no
PrintLastLog no
UseDNS no
LogLevel INFO
# {"relaxed" if self.relaxed else "production defaults"}
{self._limits()}"""

    def _limits(self) -> str:
        lines = [f"{key} {value}" for key, value in self.limits.items()]
        # 9.8 added per-source penalties (sshd -t rejects the keyword before): on by default; the
        # relaxed variant turns them off, as every load generator's connections come from one address.
        if self.relaxed and openssh_version(self.binary) >= (9, 8):
            lines.append("PerSourcePenalties no")
        return "\n".join(lines) + "\n"
