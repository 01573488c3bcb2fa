"""One-time gateway tickets: HMAC-signed, bound to a username, short expiry, single use.

A ticket is ``<payload>.<mac>`` in URL-safe base64, where the payload names the user, the expiry
(epoch milliseconds) and a random nonce. Tickets are secrets: nothing here logs them, and ``repr``
of the book shows counters only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable

#: Test-only: when set, every issued ticket is appended to this file, so a security test can grep a
#: run's outputs for the real ticket values. Never set by gateload itself; off by default.
TEST_TICKET_LOG_ENV = "GATELOAD_TEST_TICKET_LOG"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TicketBook:
    """Issues and consumes tickets; a consumed nonce is remembered until the ticket would expire."""

    def __init__(
        self, ttl_s: float, *, secret: bytes | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.ttl_s = ttl_s
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock
        self._used: dict[str, float] = {}  # nonce -> expiry (epoch s)
        self.issued = 0
        self.consumed = 0
        self.rejected = 0
        self._test_log = os.environ.get(TEST_TICKET_LOG_ENV) or None

    def __repr__(self) -> str:
        return f"TicketBook(issued={self.issued}, consumed={self.consumed}, rejected={self.rejected})"

    @property
    def remembered(self) -> int:
        """Consumed tickets still remembered (until their expiry) to refuse a second use."""
        return len(self._used)

    def issue(self, username: str) -> tuple[str, float]:
        """A new ticket for ``username`` and its expiry (epoch seconds)."""
        expires_at = self._clock() + self.ttl_s
        payload = f"{username}\0{int(expires_at * 1000)}\0{secrets.token_hex(12)}".encode()
        self.issued += 1
        ticket = f"{_b64(payload)}.{_b64(self._mac(payload))}"
        if self._test_log is not None:
            with open(self._test_log, "a") as fh:
                fh.write(ticket + "\n")
        return ticket, expires_at

    def consume(self, username: str, ticket: str) -> bool:
        """True, once, for a genuine unexpired ticket issued to ``username``; False otherwise."""
        ok = self._check(username, ticket)
        if ok:
            self.consumed += 1
        else:
            self.rejected += 1
        return ok

    def _check(self, username: str, ticket: str) -> bool:
        try:
            b64_payload, b64_mac = ticket.split(".")
            payload, mac = _unb64(b64_payload), _unb64(b64_mac)
            user, expires_ms, nonce = payload.decode().split("\0")
            expires_at = int(expires_ms) / 1000.0
        except ValueError:  # bad base64, bad UTF-8, wrong field count: all ValueError subclasses
            return False
        if not hmac.compare_digest(mac, self._mac(payload)) or user != username:
            return False
        now = self._clock()
        if now >= expires_at or nonce in self._used:
            return False
        self._forget_expired(now)
        self._used[nonce] = expires_at
        return True

    def _forget_expired(self, now: float) -> None:
        # Expired nonces need no memory: the expiry check rejects them anyway. Dicts keep insertion
        # order and every ticket has the same TTL, so the front of the dict holds (nearly) the oldest;
        # a straggler behind a live entry is dropped on a later call.
        while self._used:
            nonce, expires_at = next(iter(self._used.items()))
            if expires_at > now:
                break
            del self._used[nonce]

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()
