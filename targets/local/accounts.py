"""Accounts of the local real servers (ocserv, OpenVPN): made or read, and written as a credentials CSV.

The CSV (``username,password`` with a header, owner-only) is what a profile's ``[credentials] file``
names, so the users log on with exactly the accounts the server was given.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import secrets
from pathlib import Path

Account = tuple[str, str]  # (username, password)


def new_accounts(prefix: str, count: int) -> list[Account]:
    """``count`` accounts ``<prefix>000``... with fresh random passwords."""
    return [(f"{prefix}{i:03d}", secrets.token_urlsafe(12)) for i in range(count)]


def read_accounts(path: Path) -> list[Account]:
    """``(username, password)`` of every row of a ``username,password[,...]`` CSV with a header."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"username", "password"} <= set(rows[0]):
        raise ValueError(f"{path}: needs a header username,password and at least one account")
    return [(r["username"], r["password"]) for r in rows]


def write_credentials(path: Path, accounts: list[Account]) -> None:
    """The accounts as a credentials CSV, readable by the owner only."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["username", "password"])
    writer.writerows(accounts)
    write_private(path, out.getvalue())


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new file created 0600 (an old file is replaced, never reopened)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", newline="") as fh:
        fh.write(text)
