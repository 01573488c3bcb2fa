"""GatewayUsers against a stock OpenSSH sshd and stock accounts: bash, dash (/bin/sh) and zsh as shipped.

Each account is made by ``useradd -m`` from /etc/skel with the distribution's default prompt (Debian
bash: ``user@host:~$ `` with bracketed paste and an xterm title; zsh without ~/.zshrc: its new-user
menu first, then ``host% `` with PROMPT_SP). Nothing is installed for the harness: the screen activity
runs the profile's default POSIX command, and the harness sets its own prompt per connection. The
host key is pinned by its ``SHA256:`` fingerprint, as a real gateway's profile would.
"""

from __future__ import annotations

import contextlib
import csv
import os
import pwd
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w
import users_support  # noqa: F401  (gevent monkey-patching first, as under the locust command)
from real_support import private_dir, start_or_skip
from users_support import Run, run_users

from gateload.locustfiles.lib.remoteuser import GatewayUser
from gateload.targets.local.process import Daemon, free_port, start_with_retry
from gateload.targets.local.sshd import SECRET_DIR, STALE_UPLOAD_S, Sshd, SshKeys, ensure_test_user
from gateload.targets.profile import load_profile
from gateload.targets.reference.gateway import host_key_fingerprint

pytestmark = pytest.mark.sshd

DOCUMENT = "memo.pdf"
DOCUMENT_BYTES = 65536
SCREEN_BURSTS, SCREEN_BYTES = 3, 2048
#: Every operation kind a GatewayUser records when all goes well.
OPERATIONS = {
    ("SSH", "connect"),
    ("SSH", "shell"),
    ("SSH", "keystroke"),
    ("SSH", "enter"),
    ("SSH", "screen_update"),
    ("SSH", "exec"),
    ("SFTP", "get"),
    ("SFTP", "put"),
    ("TUNNEL", "http"),
}
WORKLOAD = {
    "activities_per_session": 20,
    "think_min_s": 0.1,
    "think_max_s": 0.4,
    "typing_interval_ms": 40.0,
    "burst_keys": 8,
    "screen_bursts": SCREEN_BURSTS,
    "screen_bytes": SCREEN_BYTES,
    "documents": [DOCUMENT],
    "timeout_s": 10.0,
    "mix": {"typing": 3.0, "screen": 1.0, "sftp_get": 1.0, "sftp_put": 1.0, "tunnel": 1.0, "exec": 1.0},
}


@dataclass
class StockGateway:
    """A running stock sshd for one shell, the intranet behind it, and profiles that point at it."""

    sshd: Sshd
    keys: SshKeys
    folder: Path
    intranet_port: int

    def profile(self, name: str, fingerprint: str | None = None) -> Path:
        """A real-target profile for this sshd, pinned by fingerprint (the right one unless given)."""
        credentials = self.folder / "credentials.csv"
        if not credentials.exists():
            fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds a password
            with os.fdopen(fd, "w", newline="") as fh:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerows([["username", "password"], [self.sshd.user.name, self.sshd.user.password]])
        data = {
            "target": {"name": name, "kind": "real"},
            "portal": {"url": "http://127.0.0.1:9"},  # unused by GatewayUser
            "gateway": {
                "host": self.sshd.host,
                "port": self.sshd.port,
                "host_key_fingerprint": fingerprint or host_key_fingerprint(self.keys.host_key_pub),
                "tunnel_target": f"127.0.0.1:{self.intranet_port}",
            },
            "credentials": {"file": str(credentials)},
            "workload": WORKLOAD,
        }
        path = self.folder / f"{name}.toml"
        path.write_text(tomli_w.dumps(data))
        return path


@contextlib.contextmanager
def stock_gateway(shell: str) -> Iterator[StockGateway]:
    """A stock sshd whose only account logs in to ``shell``, and a web service it tunnels to."""
    tag = Path(shell).name
    with private_dir(f"stock-{tag}") as folder, contextlib.ExitStack() as stack:
        intranet = folder / "intranet"
        intranet.mkdir()
        (intranet / "index.html").write_text("<html><body>intranet</body></html>\n")

        def web() -> Daemon:
            port = free_port()
            argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
            argv += ["--directory", str(intranet)]
            return Daemon("intranet", argv, [("127.0.0.1", port)], folder / "intranet.log")

        daemon = start_with_retry(web)
        stack.callback(daemon.stop)
        port = daemon.ports[0][1]
        keys = SshKeys.generate(folder / "keys")
        sshd = start_or_skip(
            lambda: Sshd(
                keys,
                folder / f"gw-{tag}",
                server_id=f"gw-{tag}",
                permit_open=[("127.0.0.1", port)],
                documents={DOCUMENT: DOCUMENT_BYTES},
                shell=shell,
            )
        )
        stack.enter_context(sshd)
        yield StockGateway(sshd, keys, folder, port)


def _check_every_operation(run: Run, users: int, server: str) -> None:
    assert not run.user_errors, run.user_errors
    ok, failed = run.operations(), run.operations(ok=False)
    assert set(ok) >= OPERATIONS, f"missing {OPERATIONS - set(ok)}; failures {run.errors()}"
    total = sum(ok.values()) + sum(failed.values())
    assert sum(failed.values()) < 0.01 * total, (failed, run.errors())
    # One logon per user: no shell broke and had to be reopened.
    assert ok[("SSH", "shell")] == users, ok
    screens = [
        s["response_length"] for s in run.samples if s["name"] == "screen_update" and not s["exception"]
    ]
    assert min(screens) >= SCREEN_BURSTS * SCREEN_BYTES  # every line of the default command came
    # The sshd's banner names it on every operation of a session (a failed logon has no backend yet).
    servers = Counter((s["name"], s["context"]["server"]) for s in run.samples if s["exception"] is None)
    assert {backend for _name, backend in servers} == {server}, (servers, run.errors())


@pytest.mark.load
def test_bash_account_with_its_default_prompt() -> None:
    with stock_gateway("/bin/bash") as gw:
        home = gw.sshd.user.home
        assert (home / ".bashrc").read_bytes() == Path("/etc/skel/.bashrc").read_bytes()  # stock
        profile = load_profile(gw.profile("bash"))
        assert profile.gateway.host_key_fingerprint.startswith("SHA256:") and not profile.gateway.host_key
        # Logons ramp at 4/s, as against any stock sshd: ten at once plus sshd's own readiness check
        # are past its shipped MaxStartups (10:30:100), which turns 30 % of further ones away.
        run = run_users(
            profile.path, GatewayUser, users=10, until=lambda r: False, timeout_s=30, spawn_rate=4
        )
    _check_every_operation(run, users=10, server="gw-bash")
    print("bash, 10 users, 30 s:", dict(run.operations()), "failed:", dict(run.operations(ok=False)))


def test_wrong_fingerprint_fails_every_connect_as_host_key_mismatch() -> None:
    with stock_gateway("/bin/bash") as gw:
        other = SshKeys.generate(gw.folder / "other-keys")
        path = gw.profile("bash-wrong-pin", fingerprint=host_key_fingerprint(other.host_key_pub))
        run = run_users(
            path, GatewayUser, users=4, until=lambda r: r.count("SSH", "connect", ok=False) >= 8, timeout_s=20
        )
    assert not run.user_errors, run.user_errors
    connects = [s for s in run.samples if s["name"] == "connect"]
    assert len(connects) >= 8
    assert all(s["exception"] is not None for s in connects)
    assert Counter(s["context"]["error"] for s in connects) == Counter({"host_key_mismatch": len(connects)})
    assert run.operations() == Counter()  # nothing got past the handshake


@pytest.mark.parametrize("shell", ["/bin/sh", "/usr/bin/zsh"])
@pytest.mark.load
def test_dash_and_zsh_accounts(shell: str) -> None:
    with stock_gateway(shell) as gw:
        user = gw.sshd.user
        if shell.endswith("zsh"):
            assert not (user.home / ".zshrc").exists()  # zsh shows its new-user menu on every login
        run = run_users(
            gw.profile(Path(shell).name), GatewayUser, users=5, until=lambda r: False, timeout_s=12
        )
        if shell.endswith("zsh"):
            assert not (user.home / ".zshrc").exists()  # the harness quit the menu, changing nothing
    _check_every_operation(run, users=5, server=f"gw-{Path(shell).name}")
    print(shell, "5 users, 12 s:", dict(run.operations()), "failed:", dict(run.operations(ok=False)))


def test_an_account_left_by_the_old_harness_is_made_stock_again() -> None:
    name = "gateload-legacy"  # its own account: the shared test accounts stay untouched
    user = start_or_skip(lambda: ensure_test_user(name, "/bin/sh"))
    try:
        skel = Path("/etc/skel")
        assert (user.home / ".profile").read_bytes() == (skel / ".profile").read_bytes()
        # What the previous version wrote: a harness .profile and no skeleton .bashrc.
        (user.home / ".profile").write_text(
            '[ -n "$GATELOAD_BIN" ] && PATH="$GATELOAD_BIN:$PATH"\nPS1=\'gw$ \'\n'
        )
        (user.home / ".bashrc").unlink()
        old, new = user.home / "upload-1-1-memo.pdf", user.home / "upload-2-1-memo.pdf"
        for upload in (old, new):
            upload.write_bytes(b"u")
        os.utime(old, (time.time() - 2 * STALE_UPLOAD_S,) * 2)
        again = ensure_test_user(name, "/bin/bash")
        for dot in (".profile", ".bashrc"):
            assert (again.home / dot).read_bytes() == (skel / dot).read_bytes(), dot
        assert pwd.getpwnam(name).pw_shell == "/bin/bash"
        assert not old.exists() and new.exists()  # only a finished run's upload is cleared
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)
        for suffix in (".secret", ".lock"):
            (SECRET_DIR / f"{name}{suffix}").unlink(missing_ok=True)
