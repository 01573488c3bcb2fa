"""The seam between a homeoffice session and the remote-access protocol that carries it.

A user class that logs on through the portal (``HomeofficeUser``) composes a portal flow with one
:class:`RemoteSession`: SSH today (``locustfiles/lib/gateway.py``), SSL-VPN, RDP or OpenVPN next. The
profile's ``[gateway] protocol`` picks it. A protocol is one module that declares its operations
catalogue (:class:`gateload.analysis.catalogue.Catalogue`) and registers a factory with :func:`register` when
it is imported; :func:`protocol` imports ``gateload.locustfiles.lib.<name>`` (or the module named in
:data:`MODULES`) the first time a profile asks for it, so adding a protocol touches no other file.

A protocol whose client is asyncio (run in the bridge's loop thread) builds its session on
:class:`gateload.locustfiles.lib.bridged.BridgedSession`, which holds the greenlet-side bookkeeping every
such session shares (close/abort, drop and reconnect rows, firing samples, timed logon steps, paced
bursts); this module stays the seam only.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gateload.analysis.catalogue import Catalogue
from gateload.errors import InputError
from gateload.locustfiles.lib.errors import OperationError

#: Protocols whose module is not named after them.
MODULES = {"ssh": "gateload.locustfiles.lib.gateway"}
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@runtime_checkable
class RemoteSession(Protocol):
    """One employee's connection through the gateway, driven from a greenlet.

    Every operation fires its own samples and never raises for a target failure: it records it and
    returns False (or the error). After a failure :attr:`usable` says whether the session can go on.
    """

    #: backend server that carries the session, when the target reveals it (None before logon)
    server: str | None

    @property
    def usable(self) -> bool:
        """Logged on and able to run activities."""
        ...

    @property
    def dropped(self) -> bool:
        """The connection ended under the session (keepalive failure, reset)."""
        ...

    @property
    def activities(self) -> tuple[str, ...]:
        """The workload activities (profile ``workload.mix`` keys) this session serves."""
        ...

    def logon(self, username: str, secret: str | None, *, record: bool = True) -> OperationError | None:
        """Connect and authenticate with the credentials (a portal ticket or an account); the first
        failure, or None when the session is ready. ``record=False`` (a reconnect) fires no samples."""
        ...

    def record_idle_drop(self) -> None:
        """Fire one sample for a connection that ended while idle (at most once per connection)."""
        ...

    def record_reconnect(self, start: float, duration_ms: float, error: OperationError | None) -> None:
        """Fire the protocol's ``reconnect`` sample (new credentials, connect, ready)."""
        ...

    def run_activity(self, name: str, document: str) -> bool:
        """Run one activity of :attr:`activities`; True on success."""
        ...

    def close(self) -> None:
        """End the session politely (bounded; no sample)."""
        ...

    def abort(self) -> None:
        """Drop the connection at once without waiting (a stopped user, a broken session)."""
        ...


#: ``factory(environment, target, user_id)`` makes one user's session
SessionFactory = Callable[[Any, Any, int], RemoteSession]


@dataclass(frozen=True)
class RemoteProtocol:
    """A registered protocol: its name, its operations and how to make a session."""

    name: str
    catalogue: Catalogue
    factory: SessionFactory
    #: it verifies the gateway's TLS certificate against ``gateway.ca_file`` (else ``portal.ca_file``)
    verifies_tls: bool = False
    #: what to fix when an operation fails with an error class, where this protocol differs from the
    #: probe's default (``{host}`` and ``{port}`` are the gateway's)
    fixes: Mapping[str, str] = field(default_factory=dict)


_registry: dict[str, RemoteProtocol] = {}


def register(
    name: str,
    catalogue: Catalogue,
    factory: SessionFactory,
    *,
    verifies_tls: bool = False,
    fixes: Mapping[str, str] | None = None,
) -> RemoteProtocol:
    """Declare a protocol (called by its module at import); registering a name twice replaces it."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"protocol name {name!r} must be lower-case letters, digits and _")
    if name not in catalogue.protocols:
        raise ValueError(f"the catalogue of protocol {name!r} declares {catalogue.protocols}")
    _registry[name] = RemoteProtocol(name, catalogue, factory, verifies_tls, dict(fixes or {}))
    return _registry[name]


def protocol(name: str) -> RemoteProtocol:
    """The registered protocol ``name``, importing its module on first use.

    An unknown name is an :class:`InputError` naming the profile key and the protocols known.
    """
    if name not in _registry:
        module = MODULES.get(name, f"gateload.locustfiles.lib.{name}")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise  # the protocol's module exists but one of its own imports is missing
        if name not in _registry:
            known = ", ".join(sorted(set(_registry) | set(MODULES)))
            raise InputError(
                f"profile gateway.protocol {name!r}: no such protocol (no module {module} registers it); "
                f"use one of {known}"
            )
    return _registry[name]


def for_profile(profile: Any) -> RemoteProtocol:
    """The protocol the profile's ``[gateway] protocol`` names (``ssh`` when the profile predates it)."""
    return protocol(getattr(profile.gateway, "protocol", "ssh"))


def missing_ca_file(profile: Any) -> str | None:
    """The CA file a TLS-verifying protocol would trust, when the profile names one that does not exist.

    Found before load, not at each logon: a missing file would fail every session with a bare
    ``FileNotFoundError`` (``other``), which reads like a gateway fault.
    """
    if not for_profile(profile).verifies_tls:
        return None
    path = profile.gateway_ca_file()
    return path if path and not Path(path).is_file() else None


def check_profile(profile: Any, also_served: tuple[str, ...] = ()) -> RemoteProtocol:
    """The profile's protocol, checked before load starts: it exists, the CA file it verifies the gateway
    with exists, and the workload mix gives weight to an activity it (or the portal: ``also_served``)
    serves; else a one-line :class:`InputError`."""
    proto = for_profile(profile)
    missing = missing_ca_file(profile)
    if missing is not None:
        raise InputError(
            f"{profile.path}: the CA file {missing} (gateway.ca_file, else portal.ca_file) does not exist; "
            f"point gateway.ca_file at the CA that signs the {proto.name} gateway's certificate"
        )
    served = (*proto.catalogue.activities, *also_served)
    if not any(profile.workload.mix.get(a, 0.0) > 0 for a in served):
        raise InputError(
            f"{profile.path}: workload.mix gives no weight to an activity protocol {proto.name!r} serves; "
            f"weight one of {', '.join(dict.fromkeys(served))}"
        )
    return proto
