"""Helpers for tests, benchmarks and the campaign: run a farm as a subprocess, derive profile variants.

``FarmProcess`` runs ``gateload serve`` in a child process (so the farm gets its own core and its own
event loop, as in a real test), waits for the ready line and stops it with SIGTERM::

    with FarmProcess("targets/profiles/reference-before.toml", state_dir=tmp) as farm:
        profile = farm.profile  # effective: real ports, absolute credential and host-key paths
        ...

``write_profile_variant`` writes a copy of a profile with some keys changed (e.g. fewer accounts,
faster service times) that still loads with ``load_profile``. Nothing here imports Locust or pandas.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from gateload.errors import InputError
from gateload.targets.profile import Profile, load_profile, profile_to_dict
from gateload.targets.reference.cli import READY_PREFIX
from gateload.targets.reference.state import Account

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
_POLL_S = 0.02  # how often to look for the ready line while waiting (bounded by the timeout)


class FarmStartError(RuntimeError):
    """The farm process exited or did not print its ready line in time; the message has its stderr."""


def resolve_profile(name_or_path: str | os.PathLike[str]) -> Path:
    """A profile path from a path or a shipped profile name such as ``reference-before``."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    shipped = PROFILES_DIR / f"{name_or_path}.toml"
    if not shipped.exists():
        names = ", ".join(sorted(x.stem for x in PROFILES_DIR.glob("*.toml")))
        raise InputError(f"no profile '{name_or_path}'; pass a TOML path or one of: {names}")
    return shipped


def write_profile_variant(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], overrides: Mapping[str, Any]
) -> Path:
    """Copy a profile to ``dest`` with dotted keys replaced, paths made absolute; validated on return.

    Keys are dotted TOML paths; list items are addressed by index, e.g.
    ``{"farm.accounts": 5, "farm.service.keystroke_ms": 1.0, "farm.servers.0.count": 2}``.
    """
    profile = load_profile(resolve_profile(source))
    data = _absolute_paths(profile)
    for key, value in overrides.items():
        _set(data, key, value)
    import tomli_w

    out = Path(dest)
    out.write_text(tomli_w.dumps(data))
    load_profile(out)  # fails here, with the usual one-line message, if an override broke it
    return out


def _absolute_paths(profile: Profile) -> dict[str, Any]:
    data = profile_to_dict(profile)
    data["credentials"]["file"] = str(profile.resolve(profile.credentials.file))
    for section, key in (("credentials", "ssh_key"), ("gateway", "host_key"), ("portal", "ca_file")):
        if data[section][key]:
            data[section][key] = str(profile.resolve(data[section][key]))
    if profile.farm is not None:
        data["farm"]["state_dir"] = str(profile.resolve(profile.farm.state_dir))
    return data


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


class FarmProcess:
    """``gateload serve`` as a child process: started on ``__enter__``, SIGTERM-ed on ``__exit__``."""

    def __init__(
        self,
        profile_path: str | os.PathLike[str],
        *,
        state_dir: str | os.PathLike[str] | None = None,
        free_ports: bool = True,
        timeout_s: float = 20.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.source = resolve_profile(profile_path)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.free_ports = free_ports
        self.timeout_s = timeout_s
        self.extra_args = extra_args
        self._tmp = Path(tempfile.mkdtemp(prefix="gateload-farm-"))
        self.profile_path = self._tmp / "effective-profile.toml"
        self._stdout = self._tmp / "stdout.txt"
        self._stderr = self._tmp / "stderr.txt"
        self._proc: subprocess.Popen[bytes] | None = None
        self.ready_line = ""
        self.startup_s = 0.0
        self._profile: Profile | None = None

    @property
    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "gateload.cli", "serve", "--profile", str(self.source)]
        cmd += ["--write-profile", str(self.profile_path)]
        if self.free_ports:
            cmd.append("--free-ports")
        if self.state_dir is not None:
            cmd += ["--state-dir", str(self.state_dir)]
        return cmd + list(self.extra_args)

    @property
    def profile(self) -> Profile:
        """The effective profile (loaded once from :attr:`profile_path`)."""
        if self._profile is None:
            self._profile = load_profile(self.profile_path)
        return self._profile

    @property
    def pid(self) -> int:
        assert self._proc is not None, "start() first"
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def start(self) -> FarmProcess:
        """Start the child and wait for its ready line; FarmStartError (with stderr) on failure."""
        started = time.monotonic()
        with self._stdout.open("wb") as out, self._stderr.open("wb") as err:
            self._proc = subprocess.Popen(self.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = started + self.timeout_s
        while time.monotonic() < deadline:
            match = re.search(rf"^{re.escape(READY_PREFIX)}.*$", self._stdout.read_text(), re.MULTILINE)
            if match:
                self.ready_line = match.group(0)
                self.startup_s = time.monotonic() - started
                return self
            if self._proc.poll() is not None:
                raise FarmStartError(self._failure(f"exited with code {self._proc.returncode}"))
            time.sleep(_POLL_S)
        self.stop()
        raise FarmStartError(self._failure(f"printed no ready line within {self.timeout_s:.0f} s"))

    def stderr_text(self) -> str:
        """What the child wrote on stderr so far."""
        return self._stderr.read_text(errors="replace") if self._stderr.exists() else ""

    def _failure(self, what: str) -> str:
        tail = self.stderr_text().strip().splitlines()[-15:]
        return f"gateload serve --profile {self.source} {what}; stderr:\n" + "\n".join(tail)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode

    def cleanup(self) -> None:
        """Remove the temporary folder holding the effective profile and the child's output."""
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> FarmProcess:
        try:
            return self.start()
        except BaseException:
            self.stop()
            self.cleanup()
            raise

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self.cleanup()


# --- a minimal portal client, for tests and smoke checks (the Locust users have their own) ---------

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def portal_login(http: Any, base_url: str, account: Account) -> str:
    """GET /login, POST /login and, when asked, POST /mfa on an ``aiohttp.ClientSession``.

    Returns the CSRF token (needed as ``X-CSRF-Token`` for launch and logout). The session needs
    ``aiohttp.CookieJar(unsafe=True)``: aiohttp's default jar ignores cookies from IP addresses.
    Raises ``AssertionError`` naming the step that failed.
    """
    async with http.get(f"{base_url}/login") as r:
        assert r.status == 200, f"GET /login: {r.status}"
        match = _CSRF.search(await r.text())
    assert match, "GET /login: no csrf_token"
    csrf = match.group(1)
    form = {"username": account.username, "password": account.password, "csrf_token": csrf}
    async with http.post(f"{base_url}/login", data=form) as r:
        assert r.status == 200, f"POST /login: {r.status}"
        mfa = (await r.json())["mfa_required"]
    if mfa:
        import pyotp

        code = pyotp.TOTP(account.totp_secret).now()
        async with http.post(f"{base_url}/mfa", data={"code": code, "csrf_token": csrf}) as r:
            assert r.status == 200, f"POST /mfa: {r.status}"
    return csrf


async def portal_ticket(base_url: str, account: Account, app: str = "desktop") -> dict[str, Any]:
    """Log in and launch ``app``: the launch answer (``ticket``, ``host``, ``port``, ``username``...)."""
    import aiohttp

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        csrf = await portal_login(http, base_url, account)
        async with http.post(
            f"{base_url}/api/launch", json={"app": app}, headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 200, f"POST /api/launch: {r.status}"
            return dict(await r.json())
