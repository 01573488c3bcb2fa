"""The farm's state folder: host key, test accounts, authorized keys, documents and SFTP sandboxes.

Layout of ``<state_dir>/`` (created at first start, reused afterwards so clients can pin the key)::

    ssh_host_key, ssh_host_key.pub   the gateway's Ed25519 host key (private key mode 0600)
    credentials.csv                  username,password[,totp_secret] for farm.accounts users (0600)
    authorized_keys                  OpenSSH public keys accepted for any user (re-read on change)
    documents/<name>                 the configured documents, random bytes of the configured size
    sftp/<username>/                 per-user SFTP sandbox, seeded with the documents at first use

Two farms may share a folder (the before and after profiles do), so first-start writes are atomic
and serialised by a lock file.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pyotp

from gateload.errors import InputError
from gateload.targets.profile import Farm

HOST_KEY = "ssh_host_key"
CREDENTIALS = "credentials.csv"
AUTHORIZED_KEYS = "authorized_keys"
# Sandbox and document names become path components: keep them to one safe component.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    totp_secret: str = ""

    def __repr__(self) -> str:  # secrets never reach logs through a repr
        return f"Account({self.username!r})"


def account_name(index: int) -> str:
    """The generated username for account number ``index`` (1-based)."""
    return f"user{index:04d}"


class FarmState:
    """Paths and loaded secrets of one state folder. Use :func:`prepare_state` to create it."""

    def __init__(
        self, root: Path, host_key: asyncssh.SSHKey, accounts: dict[str, Account], documents: dict[str, int]
    ) -> None:
        self.root = root
        self.documents = documents
        self.host_key = host_key
        self.accounts = accounts
        self.authorized_keys = AuthorizedKeys(root / AUTHORIZED_KEYS)
        self._seeded: set[str] = set()

    @property
    def host_key_path(self) -> Path:
        return self.root / HOST_KEY

    @property
    def host_key_pub_path(self) -> Path:
        return self.root / f"{HOST_KEY}.pub"

    @property
    def credentials_path(self) -> Path:
        return self.root / CREDENTIALS

    @property
    def documents_dir(self) -> Path:
        return self.root / "documents"

    def sandbox(self, username: str) -> Path:
        """The user's SFTP folder; at its first use by this process, missing documents are copied in."""
        # any username may log in with a public key: odd names get a folder named by their hash
        name = (
            username
            if SAFE_NAME.fullmatch(username)
            else "user-" + hashlib.sha256(username.encode()).hexdigest()[:16]
        )
        folder = self.root / "sftp" / name
        if name not in self._seeded:
            folder.mkdir(mode=0o700, exist_ok=True)
            for name, size in self.documents.items():
                target = folder / name
                if not target.is_file() or target.stat().st_size != size:
                    _write_private(target, (self.documents_dir / name).read_bytes())
            self._seeded.add(name)
        return folder


class AuthorizedKeys:
    """``authorized_keys`` parsed once and re-read only when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: asyncssh.SSHAuthorizedKeys | None = None

    def get(self) -> asyncssh.SSHAuthorizedKeys | None:
        """The current keys, or None when the file is missing or has no key."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            text = self.path.read_text()
            has_key = any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())
            self._keys = asyncssh.import_authorized_keys(text) if has_key else None
            self._stamp = stamp
        return self._keys


def read_credentials(path: Path) -> list[Account]:
    """The accounts of a credentials CSV (``username,password[,totp_secret]``)."""
    with Path(path).open(newline="") as fh:
        return [Account(r["username"], r["password"], r.get("totp_secret") or "") for r in csv.DictReader(fh)]


def add_authorized_key(state_dir: Path, public_key: str) -> None:
    """Append one OpenSSH public key line to ``<state_dir>/authorized_keys`` (for tests and demos)."""
    path = Path(state_dir) / AUTHORIZED_KEYS
    with _locked(Path(state_dir)), path.open("a") as fh:
        fh.write(public_key.strip() + "\n")
    path.chmod(0o600)


def prepare_state(root: Path, farm: Farm) -> FarmState:
    """Create or reuse the state folder for ``farm`` and load its secrets."""
    for name in farm.documents:
        if not SAFE_NAME.fullmatch(name):
            raise InputError(
                f"farm.documents: '{name}' is not a plain file name; use letters, digits, '.', '_', '-'"
            )
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(root):
            host_key = _host_key(root)
            accounts = _accounts(root / CREDENTIALS, farm.accounts, farm.mfa)
            _documents(root / "documents", farm.documents)
            (root / "sftp").mkdir(exist_ok=True)
            (root / AUTHORIZED_KEYS).touch(mode=0o600, exist_ok=True)
    except PermissionError as exc:
        raise InputError(f"{root}: cannot write the farm state folder ({exc}); pass --state-dir") from None
    return FarmState(root, host_key, accounts, dict(farm.documents))


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    with (root / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _host_key(root: Path) -> asyncssh.SSHKey:
    path = root / HOST_KEY
    if path.exists():
        try:
            key = asyncssh.read_private_key(path)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise InputError(
                f"{path}: not a readable SSH private key ({exc}); restore it, or delete it and the farm "
                "makes a new one (clients then pin the new host key)"
            ) from None
    else:
        key = asyncssh.generate_private_key("ssh-ed25519", comment="gateload reference farm")
        _write_private(path, key.export_private_key())
    pub = root / f"{HOST_KEY}.pub"
    expected = key.export_public_key()
    if not pub.exists() or pub.read_bytes() != expected:
        _write_private(pub, expected)
        pub.chmod(0o644)
    return key


def _accounts(path: Path, count: int, mfa: bool) -> dict[str, Account]:
    """Keep existing passwords (clients may have them) and fill in what is missing."""
    old: dict[str, dict[str, str]] = {}
    if path.exists():
        try:
            with path.open(newline="") as fh:
                old = {row["username"]: row for row in csv.DictReader(fh) if row.get("username")}
        except (UnicodeDecodeError, csv.Error) as exc:
            raise InputError(
                f"{path}: not a readable credentials CSV ({type(exc).__name__}); restore it, or delete it "
                "and the farm generates new accounts"
            ) from None
    accounts = {}
    for i in range(1, count + 1):
        name = account_name(i)
        row = old.get(name, {})
        password = row.get("password") or secrets.token_urlsafe(12)
        totp = (row.get("totp_secret") or pyotp.random_base32()) if mfa else ""
        accounts[name] = Account(name, password, totp)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["username", "password", "totp_secret"] if mfa else ["username", "password"])
    for a in accounts.values():
        writer.writerow([a.username, a.password, a.totp_secret] if mfa else [a.username, a.password])
    data = out.getvalue().encode()
    if not path.exists() or path.read_bytes() != data:
        _write_private(path, data)
    return accounts


def _documents(folder: Path, documents: dict[str, int]) -> None:
    folder.mkdir(exist_ok=True)
    for name, size in documents.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            _write_private(path, os.urandom(size))
