"""The local "real" farm of ``targets/profiles/local-real.toml``, assembled from real gateway software.

::

    users --TLS--> stunnel --> haproxy (HTTP, sticky SERVERID) --> N reference portal backends
    users --SSH--> haproxy (TCP) --> M OpenSSH sshd --direct-tcpip--> intranet (python -m http.server)

sshd runs with OpenSSH's production limits unless ``relaxed`` (``--relaxed``) asks for its relaxed
variant (:data:`gateload.targets.local.sshd.RELAXED`), as a load test with a logon storm needs.

Each portal backend is a reference-farm process with one server of its own (``web-a-01``,
``web-b-01``...), so only haproxy's stickiness keeps a portal session working: a request that reached
another backend would find no session there. The haproxy server names equal the backend ids, so the
balancer's ``X-Served-By`` header, its ``SERVERID`` cookie and the backend's own ``X-Gateload-Server``
all name the same server.

Locally the portal backends and sshd have separate account stores, so the farm writes two effective
profiles: :attr:`portal_profile_path` (portal accounts) and :attr:`gateway_profile_path` (the sshd test
user; ``key_auth=True`` adds the client key for public-key auth).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

from gateload.targets.local.haproxy import Backend as LBBackend
from gateload.targets.local.haproxy import HAProxy
from gateload.targets.local.process import Daemon, MissingTool, free_port, start_with_retry
from gateload.targets.local.sshd import Sshd, SshKeys
from gateload.targets.local.stunnel import Stunnel
from gateload.targets.local.tlsca import TestCA, make_test_ca
from gateload.targets.profile import Profile, dump_profile, load_profile

PROFILE = Path(__file__).resolve().parent.parent / "profiles" / "local-real.toml"
DOCUMENTS = {"memo.pdf": 65536}

# The portal backends: fast service times, so the tests measure the software in front of them.
_BACKEND_SETTINGS: dict[str, Any] = {
    "farm.accounts": 20,
    "farm.documents": DOCUMENTS,
    "workload.documents": list(DOCUMENTS),
    "farm.service.distribution": "constant",
    "farm.service.portal_page_ms": 1.0,
    "farm.service.portal_login_ms": 1.0,
    "farm.service.portal_launch_ms": 1.0,
}


class LocalRealFarm:
    """Start the whole local real farm (or one side of it) and write its effective profiles."""

    def __init__(
        self,
        state_dir: Path,
        *,
        portal_backends: int = 3,
        gateways: int = 2,
        profile: Path = PROFILE,
        relaxed: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.relaxed = relaxed  # sshd's relaxed variant instead of its production defaults
        self.portal_backends = portal_backends
        self.gateways = gateways
        self.profile = load_profile(profile)
        self._stack = ExitStack()
        self.ca: TestCA | None = None
        self.keys: SshKeys | None = None
        self.sshds: list[Sshd] = []
        self.backends: list[Any] = []  # FarmProcess
        self.backend_ids: list[str] = []
        self.gateway_lb: HAProxy | None = None
        self.portal_lb: HAProxy | None = None
        self.tls: Stunnel | None = None
        self.intranet_port = 0
        self.portal_accounts: Path | None = None
        self.gateway_accounts: Path | None = None

    # --- start / stop --------------------------------------------------------------------------------

    def start(self) -> LocalRealFarm:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.gateways:
                self._start_gateway_side()
            if self.portal_backends:
                self._start_portal_side()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> LocalRealFarm:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _start_gateway_side(self) -> None:
        self.intranet_port = self._start_intranet()
        self.keys = SshKeys.generate(self.state_dir / "keys")
        for i in range(1, self.gateways + 1):
            sshd = Sshd(
                self.keys,
                self.state_dir / f"gw-{i:02d}",
                server_id=f"gw-{i:02d}",
                permit_open=[("127.0.0.1", self.intranet_port)],
                documents=DOCUMENTS,
                relaxed=self.relaxed,
            )
            self.sshds.append(self._stack.enter_context(sshd))
        lb_backends = [LBBackend(s.server_id, s.host, s.port) for s in self.sshds]
        self.gateway_lb = self._stack.enter_context(
            HAProxy(self.state_dir / "lb-tcp", tcp_backends=lb_backends)
        )
        user = self.sshds[0].user
        self.gateway_accounts = _write_accounts(
            self.state_dir / "gateway-accounts.csv", [(user.name, user.password)]
        )

    def _start_intranet(self) -> int:
        """The internal web service reached through SSH tunnels: plain ``python -m http.server``."""
        root = self.state_dir / "intranet"
        root.mkdir(exist_ok=True)
        (root / "index.html").write_text("<html><body>intranet</body></html>\n")

        def make() -> Daemon:
            port = free_port()
            argv = [
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                str(port),
                "--directory",
                str(root),
            ]
            return Daemon("intranet", argv, [("127.0.0.1", port)], self.state_dir / "intranet.log")

        daemon = start_with_retry(make)
        self._stack.callback(daemon.stop)
        return daemon.ports[0][1]

    def _start_portal_side(self) -> None:
        from gateload.targets.reference.harness import FarmProcess, write_profile_variant

        shared_state = self.state_dir / "portal-state"  # one set of accounts for every backend
        lb_backends = []
        for i in range(self.portal_backends):
            group = f"web-{chr(ord('a') + i)}"
            settings = {
                **_BACKEND_SETTINGS,
                "farm.servers": [
                    {"name": group, "count": 1, "workers": 4, "max_sessions": 200, "queue_limit": 400}
                ],
            }
            variant = write_profile_variant(
                "reference-before", self.state_dir / f"backend-{group}.toml", settings
            )
            proc = self._stack.enter_context(FarmProcess(variant, state_dir=shared_state))
            server_id = proc.profile.server_ids[0]
            port = int(proc.profile.portal.url.rsplit(":", 1)[1])
            self.backends.append(proc)
            self.backend_ids.append(server_id)
            lb_backends.append(LBBackend(server_id, "127.0.0.1", port))
        self.portal_accounts = shared_state / "credentials.csv"
        self.portal_lb = self._stack.enter_context(
            HAProxy(self.state_dir / "lb-http", http_backends=lb_backends)
        )
        self.ca = make_test_ca(self.state_dir / "tls")
        self.tls = self._stack.enter_context(
            Stunnel(self.ca, ("127.0.0.1", self.portal_lb.http_port), self.state_dir / "stunnel")
        )

    # --- effective profiles ----------------------------------------------------------------------------

    def effective_profile(self, *, accounts: str, key_auth: bool = False) -> Profile:
        """The shipped profile with this run's ports, CA, host key and ``accounts`` ("portal"/"gateway")."""
        p = self.profile
        portal, gateway, credentials = p.portal, p.gateway, p.credentials
        if self.tls is not None and self.ca is not None:
            portal = dataclasses.replace(portal, url=self.tls.url, ca_file=str(self.ca.ca_cert))
        if self.gateway_lb is not None and self.keys is not None:
            gateway = dataclasses.replace(
                gateway,
                port=self.gateway_lb.tcp_port,
                host_key=str(self.keys.host_key_pub),
                tunnel_target=f"127.0.0.1:{self.intranet_port}",
            )
        source = self.portal_accounts if accounts == "portal" else self.gateway_accounts
        if source is None:
            raise ValueError(f"the {accounts} side of the farm is not running")
        credentials = dataclasses.replace(
            credentials,
            file=str(source),
            ssh_key=str(self.keys.client_key) if key_auth and self.keys else "",
        )
        return dataclasses.replace(p, portal=portal, gateway=gateway, credentials=credentials)

    def write_profile(self, name: str, *, accounts: str, key_auth: bool = False, **changes: Any) -> Path:
        """Dump an effective profile (``changes`` replace whole sections) and return its path."""
        profile = dataclasses.replace(self.effective_profile(accounts=accounts, key_auth=key_auth), **changes)
        return dump_profile(profile, self.state_dir / f"{name}.toml")

    @property
    def portal_profile_path(self) -> Path:
        return self.write_profile("portal-profile", accounts="portal")

    @property
    def gateway_profile_path(self) -> Path:
        return self.write_profile("gateway-profile", accounts="gateway")


def _write_accounts(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A credentials CSV readable only by its owner (it holds passwords)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["username", "password"])
        writer.writerows(rows)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m gateload.targets.local.farm``: run the local real farm until Ctrl-C (needs root).

    Without ``--state-dir`` the farm's state (accounts, keys, logs) lives in a temporary folder that
    is removed at exit: it holds passwords, and the profiles in it name ports that die with the farm.
    """
    import shutil
    import tempfile

    p = argparse.ArgumentParser(
        prog="python -m gateload.targets.local.farm", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="keep the farm's state (profiles, accounts, keys, logs) here; default: a temporary "
        "folder removed at exit",
    )
    p.add_argument("--portal-backends", type=int, default=3)
    p.add_argument("--gateways", type=int, default=2)
    p.add_argument(
        "--relaxed",
        action="store_true",
        help="sshd's relaxed limits (MaxStartups 200:30:400, MaxSessions 64) instead of its production "
        "defaults (10:30:100, 10): for a logon storm of more than 10 users at once",
    )
    args = p.parse_args(argv)
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="gateload-local-real-"))
    try:
        return _serve(state, args)
    except MissingTool as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # during start-up: the farm has stopped what it had started
        return 130
    finally:
        if args.state_dir is None:
            shutil.rmtree(state, ignore_errors=True)


def _serve(state: Path, args: argparse.Namespace) -> int:
    """Start the farm in ``state``, print where it listens, and hold it until SIGTERM or Ctrl-C."""
    import signal

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    sides = {"portal_backends": args.portal_backends, "gateways": args.gateways}
    with LocalRealFarm(state, relaxed=args.relaxed, **sides) as farm:
        if farm.tls is not None:
            print(f"portal  {farm.tls.url} (CA {farm.ca.ca_cert if farm.ca else ''})")
            print(f"        portal accounts: {farm.portal_profile_path}")
        if farm.gateway_lb is not None:
            servers = [s.server_id for s in farm.sshds]
            variant = "relaxed" if farm.relaxed else "production defaults"
            print(f"gateway 127.0.0.1:{farm.gateway_lb.tcp_port} -> {servers} ({variant})")
            print(f"        gateway accounts: {farm.gateway_profile_path}")
        kept = "kept" if args.state_dir else "removed at exit; --state-dir keeps it"
        print(f"state   {state} ({kept})")
        print("ready; Ctrl-C stops everything", flush=True)
        try:
            while not stop["now"]:
                signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
