"""The operations catalogue: what each protocol's operations are, shared by the load generator and analysis.

A protocol (SSH today; SSL-VPN, RDP, OpenVPN next) declares its operations once, as :class:`Operation`
entries of a :class:`Catalogue`: sample type and name, whether the operation is paced (and which profile
field plans its rate), the error classes it can produce, the workload activities (profile
``workload.mix`` keys) it serves, and the *roles* the analysis needs:

- ``logon``: the logon time of a session (``SESSION logon`` for the homeoffice user);
- ``session``: one whole session;
- ``echo``: keystroke-like echo latency (the web UI's tab, the report's CDFs).

An ``aggregate`` operation spans other operations (the SESSION rows): it gives sessions/s and logon
time but is never counted as an operation in throughput, error rate or server shares.

The load generator writes the catalogue of a run's user classes into meta.json (key ``catalogue``);
:attr:`gateload.analysis.runs.Run.catalogue` reads it back, and runs written before the key existed get
:data:`LEGACY`, the catalogue gateload's SSH users had then. This module must not import Locust.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateload.errors import InputError

ROLES = ("logon", "session", "echo")
META_KEY = "catalogue"


@dataclass(frozen=True)
class Operation:
    """One kind of sample: ``type`` and ``name`` as in the results schema, and what the analysis needs."""

    type: str
    name: str
    description: str = ""
    paced: bool = False
    #: profile field holding the planned interval in ms between a user's paced starts
    #: (e.g. ``workload.typing_interval_ms``); the planned rate is 1000 / interval per user
    rate_from: str | None = None
    errors: tuple[str, ...] = ()
    activities: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    aggregate: bool = False
    #: a paced operation run in bursts whose samples are recorded together when the burst ends (so
    #: operations started before a stop can be missing for a whole burst's span: analysis.steady)
    burst: bool = False

    @property
    def key(self) -> str:
        """``"<type> <name>"``: how the analysis and acceptance files name an operation."""
        return f"{self.type} {self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "description": self.description,
            "paced": self.paced,
            "rate_from": self.rate_from,
            "errors": list(self.errors),
            "activities": list(self.activities),
            "roles": list(self.roles),
            "aggregate": self.aggregate,
            "burst": self.burst,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Operation:
        """An operation from meta.json; bad data is an :class:`InputError` naming ``where``."""
        if not isinstance(data, Mapping):
            raise InputError(f"{where}: must be an object with type and name; fix or remove it")
        for key in ("type", "name"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise InputError(f"{where}.{key}: must be a non-empty string; fix or remove the catalogue")
        lists = {}
        for key in ("errors", "activities", "roles"):
            value = data.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InputError(f"{where}.{key}: must be a list of strings; fix or remove the catalogue")
            lists[key] = tuple(value)
        rate_from = data.get("rate_from")
        return cls(
            type=data["type"],
            name=data["name"],
            description=str(data.get("description") or ""),
            paced=bool(data.get("paced", False)),
            rate_from=str(rate_from) if rate_from else None,
            aggregate=bool(data.get("aggregate", False)),
            burst=bool(data.get("burst", False)),
            **lists,
        )


@dataclass(frozen=True)
class Catalogue:
    """The operations of one or more protocols, in declaration order (earlier wins a role)."""

    protocols: tuple[str, ...]
    operations: tuple[Operation, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        keys = [o.key for o in self.operations]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"operation declared twice in the catalogue: {', '.join(dupes)}")
        unknown = sorted({r for o in self.operations for r in o.roles} - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role {unknown[0]!r}; roles are {', '.join(ROLES)}")

    # --- questions the generator and the analysis ask -----------------------------------------

    def get(self, key: str) -> Operation | None:
        """The operation named ``"<type> <name>"``, or None."""
        return next((o for o in self.operations if o.key == key), None)

    def role(self, role: str) -> str | None:
        """The key of the first operation with ``role`` (e.g. ``"SESSION logon"`` for ``logon``), or None."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        return next((o.key for o in self.operations if role in o.roles), None)

    @property
    def logon(self) -> str | None:
        return self.role("logon")

    @property
    def echo(self) -> str | None:
        return self.role("echo")

    @property
    def paced(self) -> tuple[Operation, ...]:
        return tuple(o for o in self.operations if o.paced)

    @property
    def bursts(self) -> frozenset[str]:
        """Keys of the paced operations recorded a whole burst at a time."""
        return frozenset(o.key for o in self.operations if o.paced and o.burst)

    @property
    def aggregates(self) -> frozenset[str]:
        """Keys of the operations that span others (never counted as operations)."""
        return frozenset(o.key for o in self.operations if o.aggregate)

    @property
    def types(self) -> tuple[str, ...]:
        """Sample types in declaration order, without repeats."""
        return tuple(dict.fromkeys(o.type for o in self.operations))

    @property
    def activities(self) -> tuple[str, ...]:
        """Workload activities served, in declaration order, without repeats."""
        return tuple(dict.fromkeys(a for o in self.operations for a in o.activities))

    def errors(self) -> tuple[str, ...]:
        """Error classes any operation can produce, in declaration order."""
        return tuple(dict.fromkeys(e for o in self.operations for e in o.errors))

    # --- composing and (de)serialising ----------------------------------------------------------

    @classmethod
    def merge(cls, catalogues: Iterable[Catalogue]) -> Catalogue:
        """One catalogue of several (a run's user classes); an operation declared twice is kept once."""
        protocols: dict[str, None] = {}
        ops: dict[str, Operation] = {}
        for c in catalogues:
            protocols.update(dict.fromkeys(c.protocols))
            for o in c.operations:
                ops.setdefault(o.key, o)
        return cls(tuple(protocols), tuple(ops.values()))

    def to_json(self) -> dict[str, Any]:
        """The meta.json ``catalogue`` value."""
        return {"protocols": list(self.protocols), "operations": [o.to_json() for o in self.operations]}

    @classmethod
    def from_json(cls, data: Any, where: str = META_KEY) -> Catalogue:
        """A catalogue from meta.json; bad data is a one-line :class:`InputError` naming ``where``."""
        if not isinstance(data, Mapping) or not isinstance(data.get("operations"), list):
            raise InputError(f"{where}: must be an object with an 'operations' list; fix or remove it")
        protocols = data.get("protocols") or []
        if not isinstance(protocols, list) or not all(isinstance(p, str) for p in protocols):
            raise InputError(f"{where}.protocols: must be a list of strings; fix or remove the catalogue")
        ops = tuple(
            Operation.from_json(o, f"{where}.operations[{i}]") for i, o in enumerate(data["operations"])
        )
        try:
            return cls(tuple(protocols), ops)
        except ValueError as exc:
            raise InputError(f"{where}: {exc}; fix or remove the catalogue") from None


def catalogue_of(meta: Mapping[str, Any], where: str = META_KEY) -> Catalogue:
    """The catalogue a run's meta.json declares, or :data:`LEGACY` for runs written before the key."""
    data = meta.get(META_KEY)
    return LEGACY if data is None else Catalogue.from_json(data, where)


# ------------------------------------------------------------------------------------------- legacy


def _u(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """Error classes of several groups, without repeats."""
    return tuple(dict.fromkeys(e for g in groups for e in g))


#: What an HTTP request can fail with: its status classes first, then the transport's.
HTTP_STATUS_ERRORS = ("http_401", "http_403", "http_503", "http_5xx", "http_4xx")
HTTP_ERRORS = (*HTTP_STATUS_ERRORS, "refused", "reset", "timeout", "tls_error", "other")
#: What an SSH connection and its channels can fail with (SFTP and tunnels add their own).
SSH_ERRORS = ("refused", "reset", "timeout", "auth_failed", "host_key_mismatch", "ssh_error", "other")
# LEGACY's own copies, written out: a later change to the live groups above must not change it.
_HTTP_STATUS = ("http_401", "http_403", "http_503", "http_5xx", "http_4xx")
_HTTP_ERRORS = (*_HTTP_STATUS, "refused", "reset", "timeout", "tls_error", "other")
_SSH_ERRORS = ("refused", "reset", "timeout", "auth_failed", "host_key_mismatch", "ssh_error", "other")
_LOGON_ERRORS = _u(_HTTP_ERRORS, _SSH_ERRORS)  # a logon spans the portal and the gateway


def _op(kind: str, name: str, **kw: Any) -> Operation:
    return Operation(kind, name, **kw)


#: What runs written before meta.json had a ``catalogue`` contained: the homeoffice session, the portal
#: and the SSH gateway. A snapshot on purpose: old runs keep the meaning they were written with even
#: when a protocol's live declaration (locustfiles/lib/protocols.py) changes later.
LEGACY = Catalogue(
    ("session", "portal", "ssh"),
    (
        _op("SESSION", "logon", roles=("logon",), aggregate=True, errors=_LOGON_ERRORS),
        _op("SESSION", "session", roles=("session",), aggregate=True, errors=_LOGON_ERRORS),
        _op("HTTP", "GET /login", errors=_HTTP_ERRORS),
        _op("HTTP", "POST /login", errors=_HTTP_ERRORS),
        _op("HTTP", "POST /mfa", errors=_HTTP_ERRORS),
        _op("HTTP", "GET /api/apps", errors=_HTTP_ERRORS),
        _op("HTTP", "POST /api/launch", errors=_HTTP_ERRORS),
        _op("HTTP", "GET /documents/[doc]", errors=_HTTP_ERRORS, activities=("document",)),
        _op("HTTP", "POST /logout", errors=_HTTP_ERRORS),
        _op("SSH", "connect", errors=_SSH_ERRORS),
        _op("SSH", "shell", errors=_SSH_ERRORS),
        _op(
            "SSH",
            "keystroke",
            paced=True,
            rate_from="workload.typing_interval_ms",
            errors=_SSH_ERRORS,
            activities=("typing",),
            roles=("echo",),
        ),
        _op("SSH", "enter", errors=_SSH_ERRORS, activities=("typing",)),
        _op("SSH", "screen_update", errors=_SSH_ERRORS, activities=("screen",)),
        _op("SSH", "exec", errors=_SSH_ERRORS, activities=("exec",)),
        _op("SSH", "reconnect", errors=_LOGON_ERRORS),
        _op("SSH", "drop", errors=_SSH_ERRORS),
        _op("SFTP", "get", errors=_u(_SSH_ERRORS, ("sftp_error",)), activities=("sftp_get",)),
        _op("SFTP", "put", errors=_u(_SSH_ERRORS, ("sftp_error",)), activities=("sftp_put",)),
        _op(
            "TUNNEL",
            "http",
            errors=_u(_SSH_ERRORS, ("tunnel_refused",), HTTP_STATUS_ERRORS),
            activities=("tunnel",),
        ),
    ),
)
