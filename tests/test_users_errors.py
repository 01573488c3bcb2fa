"""Error classification of failed operations, and exceptions that are safe to record."""

from __future__ import annotations

import ssl

import asyncssh
import gevent
import pytest
from asyncssh.constants import (
    DISC_PROTOCOL_ERROR,
    DISC_TOO_MANY_CONNECTIONS,
    OPEN_ADMINISTRATIVELY_PROHIBITED,
)

from gateload.locustfiles.lib.errors import (
    ERROR_CLASSES,
    HttpStatusError,
    OperationError,
    classify,
    http_error_class,
    safe_error,
)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (302, None),
        (401, "http_401"),
        (403, "http_403"),
        (404, "http_4xx"),
        (429, "http_4xx"),
        (500, "http_5xx"),
        (502, "http_5xx"),
        (503, "http_503"),
    ],
)
def test_http_statuses(status: int, expected: str | None) -> None:
    assert http_error_class(status) == expected
    assert classify(None, status) == expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "refused"),
        (ConnectionResetError(104, "reset"), "reset"),
        (BrokenPipeError(32, "pipe"), "reset"),
        (TimeoutError(), "timeout"),
        (TimeoutError("timed out"), "timeout"),
        (gevent.Timeout(1), "timeout"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "tls_error"),
        (asyncssh.HostKeyNotVerifiable("Host key is not trusted"), "host_key_mismatch"),
        (asyncssh.PermissionDenied("Permission denied"), "auth_failed"),
        (asyncssh.DisconnectError(DISC_TOO_MANY_CONNECTIONS, "too many connections"), "refused"),
        (asyncssh.DisconnectError(DISC_PROTOCOL_ERROR, "bad"), "ssh_error"),
        (asyncssh.ConnectionLost("lost"), "reset"),
        (asyncssh.ChannelOpenError(OPEN_ADMINISTRATIVELY_PROHIBITED, "no"), "tunnel_refused"),
        (asyncssh.SFTPNoSuchFile("missing"), "sftp_error"),
        (ValueError("strange"), "other"),
        (None, None),
    ],
)
def test_exceptions(exc: BaseException | None, expected: str | None) -> None:
    assert classify(exc) == expected


def test_operation_error_keeps_its_class_and_rejects_unknown_ones() -> None:
    assert classify(OperationError("sftp_error", "x"), 200) == "sftp_error"
    with pytest.raises(ValueError):
        OperationError("http_418")
    assert all(OperationError(c).error_class == c for c in ERROR_CLASSES)


def test_safe_error_never_carries_the_original_text() -> None:
    secret = "tkt-7f3a9c-SECRET"
    for exc in (
        asyncssh.PermissionDenied(f"Permission denied for {secret}"),
        ConnectionRefusedError(111, f"refused {secret}"),
        ValueError(secret),
        asyncssh.DisconnectError(DISC_TOO_MANY_CONNECTIONS, secret),
    ):
        safe = safe_error(exc)
        assert safe is not None
        assert secret not in str(safe)
        assert safe.error_class == classify(exc)
    assert str(safe_error(None, 503)) == "http_503: HTTP 503"
    assert isinstance(safe_error(None, 404), HttpStatusError)
    assert safe_error(None, 200) is None
