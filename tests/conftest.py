# ruff: noqa: I001  (locust must be imported first: see below)
"""Shared pytest fixtures. Keep them generic: every engineer's tests use them.

Reference farms
---------------
``reference_farm(name_or_path="reference-before", **overrides) -> Path``  (session scope)
    Starts ``gateload serve`` as a subprocess on free ports with a private temporary state folder
    and returns the path of its *effective* profile (real ports, absolute paths to the generated
    credentials file and pinned host key): pass it to ``load_profile`` or to Locust. Overrides are
    profile keys with ``__`` for dots, e.g. ``reference_farm("reference-after", farm__accounts=20,
    farm__service__keystroke_ms=2.0)``. The same name + overrides within a session reuse the
    same running farm, so treat it as shared: do not assume a fresh one, and do not saturate it
    unless you asked for a variant of your own. All farms stop (SIGTERM) at the end of the session.
    Never runs on the profiles' fixed ports, so concurrent test runs do not collide.

``reference_farm_process(path) -> FarmProcess``
    The :class:`~gateload.targets.reference.harness.FarmProcess` behind a path returned by ``reference_farm``
    (its ``ready_line``, ``pid``, ``stderr_text()``).

``fast_profile(**overrides) -> Profile``  (function scope)
    A reference profile for an *in-process* ``ReferenceFarm``: free ports, a private state folder,
    5 accounts and 1 ms service times unless overridden (same ``__`` convention), e.g.
    ``asyncio.run(scenario(fast_profile(farm__mfa=True)))`` with
    ``async with ReferenceFarm(profile) as farm: ...`` inside.

Keys
----
``ssh_keypair -> SSHKeyPair``  (session scope)
    A fresh Ed25519 client key pair on disk: ``.private_path`` (mode 0600) and ``.public_line``
    (one OpenSSH ``authorized_keys`` line). Add it to a farm with
    ``gateload.targets.reference.state.add_authorized_key(state_dir, pair.public_line)``.
"""

from __future__ import annotations

# Many test modules run Locust in-process, and importing Locust monkey-patches the standard library
# with gevent for the whole pytest process. Do it first, once, before anything imports ssl or asyncio
# (patching after that is what gevent warns about), so every test sees the same interpreter.
import locust  # noqa: F401

import gc
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from gateload.targets.profile import Profile, load_profile
from gateload.targets.reference.farm import with_free_ports
from gateload.targets.reference.harness import FarmProcess, write_profile_variant

# A test run started as a script's background job (`cmd &`, nohup, some CI runners) inherits SIGINT
# *ignored*, and so would every Locust it starts: the Ctrl-C tests' runs would go on to their end (exit 0).
# Give this process, and so its children, the Ctrl-C a terminal gives.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

FAST_SERVICE = {
    "farm.accounts": 5,
    "farm.service.portal_page_ms": 1.0,
    "farm.service.portal_login_ms": 1.0,
    "farm.service.portal_launch_ms": 1.0,
    "farm.service.ssh_auth_ms": 1.0,
    "farm.service.keystroke_ms": 1.0,
    "farm.service.screen_update_ms": 1.0,
    "farm.service.tunnel_request_ms": 1.0,
    "farm.service.sftp_mb_per_s": 500.0,
}


def _dotted(overrides: dict[str, Any]) -> dict[str, Any]:
    return {key.replace("__", "."): value for key, value in overrides.items()}


@pytest.fixture(scope="session")
def _farm_processes() -> Iterator[dict[Path, FarmProcess]]:
    procs: dict[Path, FarmProcess] = {}
    yield procs
    for proc in procs.values():
        proc.stop()
        proc.cleanup()


@pytest.fixture(scope="session")
def reference_farm(
    tmp_path_factory: pytest.TempPathFactory, _farm_processes: dict[Path, FarmProcess]
) -> Callable[..., Path]:
    """Factory: start (or reuse) a reference farm subprocess; returns its effective profile path."""
    by_key: dict[tuple[str, str], Path] = {}

    def start(name_or_path: str | Path = "reference-before", **overrides: Any) -> Path:
        dotted = _dotted(overrides)
        key = (str(name_or_path), repr(sorted(dotted.items())))
        if key in by_key:
            return by_key[key]
        folder = tmp_path_factory.mktemp("reference-farm")
        variant = write_profile_variant(name_or_path, folder / "profile.toml", dotted)
        proc = FarmProcess(variant, state_dir=folder / "state")
        proc.__enter__()
        _farm_processes[proc.profile_path] = proc
        by_key[key] = proc.profile_path
        return proc.profile_path

    return start


@pytest.fixture(scope="session")
def reference_farm_process(_farm_processes: dict[Path, FarmProcess]) -> Callable[[Path], FarmProcess]:
    """Look up the FarmProcess behind a path returned by ``reference_farm``."""
    return lambda path: _farm_processes[Path(path)]


@pytest.fixture
def fast_profile(tmp_path: Path) -> Callable[..., Profile]:
    """Factory: a fast reference profile (free ports, own state folder) for an in-process farm."""
    counter = iter(range(1_000_000))

    def make(name_or_path: str | Path = "reference-before", **overrides: Any) -> Profile:
        n = next(counter)
        settings = {**FAST_SERVICE, "farm.state_dir": str(tmp_path / f"state-{n}"), **_dotted(overrides)}
        path = write_profile_variant(name_or_path, tmp_path / f"profile-{n}.toml", settings)
        return with_free_ports(load_profile(path))

    return make


@dataclass(frozen=True)
class SSHKeyPair:
    private_path: Path
    public_line: str


@pytest.fixture(scope="session")
def ssh_keypair(tmp_path_factory: pytest.TempPathFactory) -> SSHKeyPair:
    """A fresh Ed25519 client key pair (private key file 0600, public key as one line)."""
    folder = tmp_path_factory.mktemp("ssh-key")
    key = asyncssh.generate_private_key("ssh-ed25519", comment="gateload-test")
    private = folder / "id_ed25519"
    key.write_private_key(private)
    private.chmod(0o600)
    public = key.export_public_key().decode().strip()
    (folder / "id_ed25519.pub").write_text(public + "\n")
    return SSHKeyPair(private, public)


@pytest.fixture(autouse=True)
def _collector_unfrozen() -> Iterator[None]:
    """A Locust run inside the test process freezes the garbage collector's objects at every spawn
    (locustfiles/lib/gcfreeze.py): each test ends with them unfrozen, as the next one expects."""
    yield
    gc.unfreeze()
