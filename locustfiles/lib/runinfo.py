"""What meta.json says about a run besides its samples: versions, git revision, host, profile, args,
the operations catalogue of its user classes and the planned rates of its paced operations.

Everything that leaves this module is sanitized: secret-looking keys are masked and credentials in
URLs are removed, although neither the profile nor gateload's options ever hold a secret.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateload import paths
from gateload.analysis.catalogue import LEGACY, Catalogue
from gateload.locustfiles.lib.catalogues import run_catalogue
from gateload.locustfiles.lib.schedule import Plan
from gateload.targets.profile import Profile, profile_to_dict

REPO = paths.CHECKOUT  # None for an installed wheel: its git revision is not gateload's
PACKAGES = ("locust", "asyncssh", "aiohttp", "gevent", "pyarrow", "gateload")
MASK = "***"
# Keys whose string values are never written: passwords, OTP secrets, tickets, tokens, cookies' values.
_SECRET_KEY = re.compile(
    r"pass(word|wd)?$|passw|secret|token|ticket$|tickets|otp|credential_value|api_?key", re.I
)
_URL_WITH_USER = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*@", re.I)


def static_info() -> dict[str, Any]:
    """Facts that do not change between runs of one process (computed once, at init)."""
    return {
        "versions": versions(),
        "git_revision": git_revision(),
        "host": socket.gethostname(),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python_executable": sys.executable,
        },
    }


def versions() -> dict[str, str | None]:
    """Python and the packages that shape the measurements."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_revision(repo: Path | None = REPO) -> str | None:
    """``git rev-parse HEAD`` of the checkout the locustfile runs from, or None outside git."""
    if repo is None:
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if re.fullmatch(r"[0-9a-f]{40,64}", rev) else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def profile_meta(profile: Profile | None) -> dict[str, Any] | None:
    """meta.json ``profile``: where it came from, its hash, its servers and its (sanitized) data."""
    if profile is None:
        return None
    return {
        "path": str(profile.path),
        "name": profile.target.name,
        "sha256": file_sha256(profile.path),
        "servers": list(profile.server_ids),
        "data": sanitize(profile_to_dict(profile)),
    }


def security(profile: Profile | None) -> dict[str, Any]:
    """meta.json ``security``: the profile's verification opt-outs (None without a profile)."""
    if profile is None:
        return {"host_key_verified": None, "tls_verified": None, "tls": None}
    tls = urlsplit(profile.portal.url).scheme == "https"
    gw = profile.gateway
    # the gateway's identity (an SSH host key, an RDP certificate): unpinned, nothing connects unless
    # verify_host_key opts out
    return {
        "host_key_verified": bool(gw.verify_host_key),
        "tls_verified": bool(tls and profile.portal.tls_verify),
        "tls": tls,  # False: the portal is plain HTTP, so nothing was TLS-verified
    }


def think_time_s(profile: Profile | None) -> float | None:
    """Mean think time between a user's activities (for Little's law)."""
    if profile is None:
        return None
    w = profile.workload
    return (w.think_min_s + w.think_max_s) / 2.0


def catalogue(user_classes: Iterable[type], profile: Profile | None) -> Catalogue | None:
    """The operations catalogue of the run's user classes (meta.json ``catalogue``), or None."""
    return run_catalogue(user_classes, profile)


def paced(profile: Profile | None, plan: Plan, operations: Catalogue | None = None) -> dict[str, float]:
    """meta.json ``paced``: planned rate per user of paced operations (ops/s), keyed "<type> <name>".

    The session's ``role = "session"`` operation (``SESSION session``): the arrivals shape's rate shared
    by its pool of users (arrival rate / -u; the rate of the whole test is in meta.json ``arrivals``).
    Each paced operation of the catalogue: 1000 / its ``rate_from`` profile field, the planned interval
    in ms (``SSH keystroke``: one typing user's keystroke rate while typing, from typing_interval_ms).
    """
    out: dict[str, float] = {}
    # User classes that declare no catalogue record what the SSH homeoffice user does (as the analysis
    # assumes for runs without one).
    operations = operations or LEGACY
    session = operations.role("session")
    if session and plan.shape == "arrivals" and plan.arrival_rate > 0 and plan.peak_users > 0:
        out[session] = plan.arrival_rate / plan.peak_users
    if profile is None:
        return out
    for op in operations.paced:
        interval = _profile_field(profile, op.rate_from) if op.rate_from else None
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            out[op.key] = 1000.0 / interval
    return out


def _profile_field(profile: Profile, dotted: str) -> Any:
    """A profile value by its dotted name (``workload.typing_interval_ms``), or None when absent."""
    value: Any = profile
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value


def sanitize_args(options: Any, secret_dests: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Parsed options as JSON-ready data without secrets."""
    data = {k: v for k, v in vars(options).items() if not k.startswith("gateload_")}
    for key in secret_dests & set(data):
        if data[key]:
            data[key] = MASK
    return sanitize(data)


def sanitize(value: Any, key: str = "") -> Any:
    """A copy of ``value`` with secret-looking keys masked and user:password@ removed from URLs."""
    if isinstance(value, dict):
        return {k: sanitize(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [sanitize(v, key) for v in value]
    if isinstance(value, str | bytes) and key and _SECRET_KEY.search(key) and value:
        return MASK
    if isinstance(value, str) and _URL_WITH_USER.match(value):
        return _strip_userinfo(value)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
