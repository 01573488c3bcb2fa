"""A real OpenSSH sshd on a loopback port, configured entirely from a private folder.

What it offers is what the GatewayUser needs from a real gateway: a dedicated test user whose shell is
``/bin/sh`` (a heavy ``.bashrc`` makes sshd exec slow), password and public-key auth, the SFTP
subsystem (``internal-sftp``, starting in a per-run folder seeded with documents), ``direct-tcpip``
only to the services named in ``permit_open``, and backend attribution the way the reference farm does
it: the pre-auth banner ``gateload-server: <id>`` and ``GATELOAD_SERVER=<id>`` in the session.

Usage::

    keys = SshKeys.generate(tmp)
    with Sshd(keys, tmp / "gw-01", server_id="gw-01", permit_open=[("127.0.0.1", 8080)]) as sshd:
        ...  # sshd.host, sshd.port, sshd.user.name, sshd.user.password, keys.client_key
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import secrets
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from targets.local.process import Daemon, Launcher, free_port, require_binary, require_root

TEST_USER = "gateload-test"
# Root-only file holding the test user's password, so concurrent test runs on one machine agree on it.
SECRET_DIR = Path("/var/lib/gateload")
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it (privilege separation)

# `screen N B` as the reference gateway answers it: N bursts of B printable bytes, one per line.
SCREEN_SCRIPT = """#!/bin/sh
n=${1:-1}; b=${2:-80}; i=0
while [ "$i" -lt "$n" ]; do head -c "$b" /dev/zero | tr '\\0' 'x'; printf '\\n'; i=$((i + 1)); done
"""


# The PTY shell is a login shell: /etc/profile resets PATH and PS1, then this runs. It restores the
# run's bin folder (sshd passes GATELOAD_BIN) and sets the reference farm's prompt.
LOGIN_PROFILE = """\
[ -n "$GATELOAD_BIN" ] && PATH="$GATELOAD_BIN:$PATH"
PS1='gw$ '
export PATH PS1
"""


@dataclass(frozen=True)
class TestUser:
    """The dedicated local account the gateway tests log in as."""

    __test__ = False  # not a pytest test class

    name: str
    password: str
    home: Path
    uid: int
    gid: int


def ensure_test_user(name: str = TEST_USER) -> TestUser:
    """Create the test user (``/bin/sh``, empty home) if missing and set its password with chpasswd.

    The password is random per machine, kept in a root-only file and set again on every call, so
    parallel test runs agree on it and a changed password heals itself. Needs root.
    """
    require_root("create the test user and set its password")
    require_binary("useradd", "passwd")
    SECRET_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(SECRET_DIR / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        home = Path("/home") / name
        try:
            pwd.getpwnam(name)
        except KeyError:
            # No skeleton files: a login shell must not read a heavy profile on every exec.
            subprocess.run(
                ["useradd", "--home-dir", str(home), "--no-create-home", "--shell", "/bin/sh", name],
                check=True,
                capture_output=True,
            )
        entry = pwd.getpwnam(name)
        home = Path(entry.pw_dir)
        home.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        (home / ".profile").write_text(LOGIN_PROFILE)
        password = _stored_password(SECRET_DIR / f"{name}.secret")
        # The password goes on stdin, never on a command line that `ps` would show.
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True, capture_output=True)
        return TestUser(name, password, home, entry.pw_uid, entry.pw_gid)


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
    """A foreground ``sshd -D -e -f <private config>`` on 127.0.0.1 and a free port."""

    def __init__(
        self,
        keys: SshKeys,
        state_dir: Path,
        *,
        server_id: str = "gw-01",
        permit_open: list[tuple[str, int]] | None = None,
        documents: dict[str, int] | None = None,
        user: str = TEST_USER,
        host: str = "127.0.0.1",
        max_startups: str = "200:30:400",
    ) -> None:
        self.binary = require_binary("sshd", "openssh-server")
        require_root("run sshd with privilege separation")
        self.keys = keys
        self.state_dir = state_dir
        self.server_id = server_id
        self.permit_open = permit_open or []
        self.documents = documents or {}
        self.user = ensure_test_user(user)
        self.host = host
        self.port = 0
        self.max_startups = max_startups
        self.sftp_dir = state_dir / "sftp"
        self._daemon: Daemon | None = None

    @property
    def daemon(self) -> Daemon | None:
        return self._daemon

    def _prepare(self) -> None:
        """Write the state folder, seed the SFTP folder; sshd needs its privilege-separation dir."""
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
        bin_dir = self.state_dir / "bin"
        bin_dir.mkdir(mode=0o755, exist_ok=True)
        (bin_dir / "screen").write_text(SCREEN_SCRIPT)
        (bin_dir / "screen").chmod(0o755)
        self.sftp_dir.mkdir(mode=0o755, exist_ok=True)
        os.chown(self.sftp_dir, self.user.uid, self.user.gid)
        for name, size in self.documents.items():
            doc = self.sftp_dir / name
            doc.write_bytes(os.urandom(size))
            os.chown(doc, self.user.uid, self.user.gid)

    def config_text(self) -> str:
        """The private sshd_config; nothing from /etc/ssh/sshd_config is read."""
        permit = " ".join(f"{h}:{p}" for h, p in self.permit_open) or "none"
        forwarding = "local" if self.permit_open else "no"
        path = f"{self.state_dir / 'bin'}:/usr/local/bin:/usr/bin:/bin"
        return f"""\
# Written by targets/local/sshd.py for one test run; removed with its folder.
Port {self.port}
ListenAddress {self.host}
HostKey {self.keys.host_key}
PidFile none
UsePAM no
AllowUsers {self.user.name}
PermitRootLogin no
PasswordAuthentication yes
PermitEmptyPasswords no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile {self.state_dir / "authorized_keys"}/%u
# The run folder lives under /tmp (mode 1777), which StrictModes would reject.
StrictModes no
AllowTcpForwarding {forwarding}
PermitOpen {permit}
GatewayPorts no
X11Forwarding no
AllowAgentForwarding no
PermitTunnel no
PermitTTY yes
Subsystem sftp internal-sftp -d {self.sftp_dir}
Banner {self.state_dir / "banner"}
SetEnv GATELOAD_SERVER={self.server_id} GATELOAD_BIN={self.state_dir / "bin"} PATH={path}
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups {self.max_startups}
MaxSessions 64
LoginGraceTime 30
LogLevel INFO
{self._version_specific()}"""

    def _version_specific(self) -> str:
        """Options that only newer OpenSSH knows (sshd -t rejects unknown keywords)."""
        # 9.8 added per-source penalties: a test's deliberate auth failures would lock out 127.0.0.1.
        return "PerSourcePenalties no\n" if openssh_version(self.binary) >= (9, 8) else ""
