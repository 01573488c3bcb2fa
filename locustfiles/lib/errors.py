"""Error classes of failed operations, and exceptions whose message is safe to record.

Every failure sample carries one error class (the ``error`` column of the results schema). The
exceptions given to Locust end up in its failures CSV and web UI, so their ``str()`` is a short
message built from the class and fixed words only: never a server-provided text, a URL with a query,
a password or a ticket.
"""

from __future__ import annotations

import errno
import ssl

import asyncssh
import gevent
from asyncssh.constants import DISC_TOO_MANY_CONNECTIONS
from geventhttpclient.response import HTTPParseError

ERROR_CLASSES = (
    "http_401",
    "http_403",
    "http_503",
    "http_5xx",
    "http_4xx",
    "refused",
    "reset",
    "timeout",
    "auth_failed",
    "host_key_mismatch",
    "tls_error",
    "ssh_error",
    "sftp_error",
    "tunnel_refused",
    # the server's anti-abuse limits turned the user away (a per-user session limit, a connection cap,
    # a ban, a rate limit): a load generator on one address meets them long before capacity
    "throttled",
    "other",
)


class OperationError(Exception):
    """A failed operation with a known error class; ``str()`` is safe to log and record."""

    def __init__(self, error_class: str, detail: str = "") -> None:
        if error_class not in ERROR_CLASSES:
            raise ValueError(f"unknown error class {error_class!r}")
        self.error_class = error_class
        self.detail = detail
        super().__init__(f"{error_class}: {detail}" if detail else error_class)


class HttpStatusError(OperationError):
    """A response with an error status."""

    def __init__(self, status: int) -> None:
        super().__init__(http_error_class(status) or "other", f"HTTP {status}")
        self.status = status


class RecordedFailure(OperationError):
    """Raised after a failure has already been fired as a sample, so callers only decide how to recover."""


def http_error_class(status: int) -> str | None:
    """The error class of an HTTP status, or None for a success (< 400)."""
    if status < 400:
        return None
    if status in (401, 403, 503):
        return f"http_{status}"
    return "http_5xx" if status >= 500 else "http_4xx"


def classify(exc: BaseException | None, status: int | None = None) -> str | None:
    """The error class of an operation's outcome, or None when it succeeded.

    ``status`` is an HTTP status when there was a response; an exception without a status is
    classified by type (connection refused, reset, timeout, SSH and TLS failures).
    """
    if isinstance(exc, OperationError):
        return exc.error_class
    if status:
        cls = http_error_class(status)
        if cls is not None:
            return cls
    if exc is None:
        return None
    return _classify_exception(exc)


def safe_error(exc: BaseException | None, status: int | None = None) -> OperationError | None:
    """An exception to record in place of ``exc``: same class, message without any target text."""
    if isinstance(exc, OperationError):
        return exc
    if status and http_error_class(status):
        return HttpStatusError(status)
    cls = classify(exc, status)
    if cls is None:
        return None
    return OperationError(cls, _detail(exc))


def _cause(exc: BaseException) -> BaseException:
    """The error a wrapper carries: geventhttpclient (FastHttpSession) raises RetriesExceeded with the
    timeout, refusal or reset as ``original``; classified as itself it would be "other"."""
    for _ in range(5):  # bounded: a wrapper of a wrapper at most a few levels deep
        inner = getattr(exc, "original", None)
        if not isinstance(inner, BaseException) or inner is exc:
            break
        exc = inner
    return exc


def _classify_exception(exc: BaseException) -> str:
    exc = _cause(exc)
    # asyncssh first: its DisconnectError subclasses are not OSErrors.
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return "host_key_mismatch"
    if isinstance(exc, asyncssh.PermissionDenied):
        return "auth_failed"
    if isinstance(exc, asyncssh.ConnectionLost):
        return "reset"
    if isinstance(exc, asyncssh.DisconnectError):
        return "refused" if exc.code == DISC_TOO_MANY_CONNECTIONS else "ssh_error"
    if isinstance(exc, asyncssh.ChannelOpenError):
        return "tunnel_refused"
    if isinstance(exc, asyncssh.SFTPError):
        return "sftp_error"
    if isinstance(exc, asyncssh.Error | asyncssh.ProcessError):
        return "ssh_error"
    # SSLError is an OSError: test it before the socket errors.
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls_error"
    if isinstance(exc, TimeoutError | gevent.Timeout):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError | EOFError):
        return "reset"
    if isinstance(exc, HTTPParseError):  # geventhttpclient: the server closed mid-response
        return "reset"
    if isinstance(exc, OSError):
        return _classify_errno(exc.errno)
    return "other"


def _classify_errno(code: int | None) -> str:
    if code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "refused"
    if code in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
        return "reset"
    if code == errno.ETIMEDOUT:
        return "timeout"
    return "other"


def _detail(exc: BaseException | None) -> str:
    """Fixed words about an exception: its type and a numeric code, never its message text."""
    if exc is None:
        return ""
    exc = _cause(exc)
    name = type(exc).__name__
    code = getattr(exc, "code", None)
    if isinstance(exc, asyncssh.Error | asyncssh.ProcessError) and isinstance(code, int):
        return f"{name} code {code}"
    err = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and isinstance(err, int):
        return f"{name} errno {err}"
    return name
