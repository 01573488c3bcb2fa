"""Concurrent gateway logins per account, limited as real gateways limit them.

``farm.max_sessions_per_account`` (0 = unlimited, the default) is what pam_limits ``maxlogins`` is to
sshd and ``max-same-clients`` to ocserv: a logon of an account that already has that many SSH
sessions open is refused after its credentials were checked (the gateway sends an SSH disconnect
``DISC_TOO_MANY_CONNECTIONS``, "too many logins for this account", which a client classifies as
``refused``). A public-key logon has no password check to refuse in: over the limit it is closed with
the same disconnect right after authentication, as sshd closes a session pam_limits refuses, and the
client sees its first channel fail. The counters show in ``/metrics``: they are also how a test proves
that a load generator gave every concurrent user its own account.
"""

from __future__ import annotations

import logging

from gateload.errors import InputError

logger = logging.getLogger(__name__)


class AccountLogins:
    """Open SSH sessions by account (only the farm's event loop touches it), with peaks and refusals."""

    def __init__(self, limit: int = 0) -> None:
        if limit < 0:
            raise InputError(
                f"farm.max_sessions_per_account is {limit}; "
                "give 0 (unlimited) or the sessions one account may hold"
            )
        self.limit = limit
        self._open: dict[str, int] = {}
        self.logins = 0  # logons admitted
        self.refused = 0  # logons refused by the limit
        self.peak_per_account = 0  # most sessions one account held at once
        self.peak_accounts = 0  # most distinct accounts holding sessions at once

    def try_open(self, username: str) -> bool:
        """Admit a logon of ``username`` (True), or refuse it when the account is at its limit."""
        held = self._open.get(username, 0)
        if self.limit and held >= self.limit:
            self.refused += 1
            # The username is not a secret; it tells an operator which accounts collide.
            logger.warning("refused a logon of %s: %d of %d sessions open", username, held, self.limit)
            return False
        self._open[username] = held + 1
        self.logins += 1
        self.peak_per_account = max(self.peak_per_account, held + 1)
        self.peak_accounts = max(self.peak_accounts, len(self._open))
        return True

    def close(self, username: str) -> None:
        """A session admitted by :meth:`try_open` ended."""
        left = self._open.get(username, 0) - 1
        if left > 0:
            self._open[username] = left
        else:
            self._open.pop(username, None)

    def snapshot(self) -> dict[str, int]:
        """The counters, as /metrics reports them (no usernames)."""
        return {
            "limit": self.limit,
            "open_sessions": sum(self._open.values()),
            "accounts_in_use": len(self._open),
            "logins": self.logins,
            "refused": self.refused,
            "peak_per_account": self.peak_per_account,
            "peak_accounts_in_use": self.peak_accounts,
        }
