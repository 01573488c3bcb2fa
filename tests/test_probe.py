"""`gateload probe` and `gateload pin` against running targets: the reference farm and real OpenSSH.

Both commands run as the user runs them: a subprocess with its own, unpatched interpreter (this
pytest process has imported Locust). One of them also checks that the probe never imports Locust.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import tomli_w

from gateload.targets.profile import load_profile

ROOT = Path(__file__).resolve().parent.parent
GATELOAD = [sys.executable, "-m", "gateload.cli"]
# The probe as a library call in a fresh interpreter, which then checks what got imported.
NO_LOCUST = (
    "import sys; from gateload.cli import main; rc = main(sys.argv[1:]); "
    "from gevent import monkey; "
    "assert 'locust' not in sys.modules, 'the probe imported Locust'; "
    "assert not monkey.is_module_patched('socket'), 'the probe monkey-patched the interpreter'; "
    "sys.exit(rc)"
)


def gateload(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATELOAD, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def lines(out: str, status: str) -> list[str]:
    return [line for line in out.splitlines() if line.split(" ", 1)[0] == status]


def variant(path: Path, folder: Path, name: str, **sections: dict[str, Any]) -> Path:
    """A copy of an (effective, absolute-path) profile with some keys of some sections changed."""
    data = tomllib.loads(path.read_text())
    for section, values in sections.items():
        data[section].update(values)
    out = folder / f"{name}.toml"
    out.write_text(tomli_w.dumps(data))
    return out


def secrets_of(profile_path: Path) -> list[str]:
    """Every password and TOTP secret in the profile's credentials file."""
    text = load_profile(profile_path).credentials_path.read_text().splitlines()
    values = [cell for row in text[1:] for cell in row.split(",")[1:]]
    return [v for v in values if len(v) >= 6]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def farm(reference_farm: Any) -> Path:
    return reference_farm("reference-before")


def test_probe_of_the_reference_farm_is_all_ok_and_imports_no_locust(farm: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_LOCUST, "probe", str(farm)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert lines(out.stdout, "FAIL") == [] and lines(out.stdout, "skip") == []
    ok = "\n".join(lines(out.stdout, "ok"))
    for expected in (
        "plain HTTP",
        "logon as ",
        "apps: ",
        "launch desktop: gateway login user",
        "with a ticket",
        "document memo.pdf (65536 bytes, 1 request",
        "logout",
        "TCP connect",
        "matches",
        "authenticated as ",
        "with the portal's ticket",
        "PTY shell, prompt seen",
        "screen update (",
        "exec `echo gateload-probe`",
        "SFTP stat memo.pdf (65536 bytes",
        "tunnel to intranet:80 GET /: HTTP 200",
    ):
        assert expected in ok, (expected, out.stdout)
    assert len(lines(out.stdout, "ok")) == 14  # 6 portal, 8 gateway checks
    for secret in secrets_of(farm):
        assert secret not in out.stdout + out.stderr


def test_a_wrong_fingerprint_is_a_fail_line_that_shows_the_pin_command(farm: Path, tmp_path: Path) -> None:
    wrong = asyncssh.generate_private_key("ssh-ed25519").get_fingerprint("sha256")
    path = variant(farm, tmp_path, "wrong-pin", gateway={"host_key": "", "host_key_fingerprint": wrong})
    out = gateload("probe", str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    gw = load_profile(farm).gateway
    real = asyncssh.read_public_key(gw.host_key).get_fingerprint("sha256")
    [fail] = lines(out.stdout, "FAIL")
    assert f"host key {real} does not match the pin {wrong}" in fail
    assert f"gateload pin {gw.host}:{gw.port}" in fail
    # nothing is sent to a gateway that is not the pinned one
    assert any("authentication" in line for line in lines(out.stdout, "skip"))
    assert "authenticated" not in out.stdout
    assert len(lines(out.stdout, "ok")) == 7  # the portal's six, and the gateway's TCP connect


def test_a_portal_that_is_down_is_a_fail_line_and_the_gateway_is_still_checked(
    farm: Path, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    path = variant(farm, tmp_path, "portal-down", portal={"url": down})
    out = gateload("probe", str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    [fail] = lines(out.stdout, "FAIL")
    assert fail.split()[1] == "portal" and down in fail and "connection refused" in fail
    assert f"-> start it (gateload serve --profile {path}) or fix portal.url" in fail
    # without a ticket the gateway is tried with the account password (the farm takes both)
    ok = lines(out.stdout, "ok")
    assert any("with the account password" in line for line in ok), out.stdout
    assert any("tunnel to intranet:80" in line for line in ok), out.stdout


def test_a_gateway_that_is_down_fails_and_skips_the_rest(farm: Path, tmp_path: Path) -> None:
    path = variant(farm, tmp_path, "gateway-down", gateway={"port": free_port()})
    out = gateload("probe", str(path), "--only", "gateway")
    assert out.returncode == 1
    [fail] = lines(out.stdout, "FAIL")
    assert "connection refused" in fail and "gateway.host/port" in fail
    assert lines(out.stdout, "ok") == [] and len(lines(out.stdout, "skip")) == 1
    assert "portal" not in out.stdout  # --only gateway


def test_one_connect_spec_for_probe_and_users(farm: Path) -> None:
    # The probe and the users share sshops.connect_spec (no Locust import): one way to pin and log on.
    import asyncssh

    from gateload.locustfiles.lib.sshops import connect_spec

    profile = load_profile(farm)
    spec = connect_spec(profile, "user0001", "pw", 3.0)
    pinned = asyncssh.read_public_key(str(profile.resolve(profile.gateway.host_key)))
    assert [k.get_fingerprint() for k in spec.trusted_host_keys] == [pinned.get_fingerprint()]
    assert (spec.host, spec.port, spec.username, spec.timeout_s) == (
        profile.gateway.host,
        profile.gateway.port,
        "user0001",
        3.0,
    )
    assert connect_spec(profile, "user0001", "pw").timeout_s == profile.workload.timeout_s
    assert "pw" not in repr(spec)


def test_a_screen_command_the_shell_lacks_is_a_fail_line(farm: Path, tmp_path: Path) -> None:
    path = variant(farm, tmp_path, "no-screen", gateway={"screen_command": "no-such-screen {bursts} {bytes}"})
    out = gateload("probe", str(path), "--only", "gateway")
    assert out.returncode == 1, out.stdout
    [fail] = lines(out.stdout, "FAIL")
    assert "screen update `no-such-screen 2 256`" in fail and "set gateway.screen_command" in fail
    assert any("exec" in line for line in lines(out.stdout, "ok"))  # the other checks still ran


def test_pin_prints_the_farms_host_key_fingerprint(farm: Path) -> None:
    gw = load_profile(farm).gateway
    out = gateload("pin", f"{gw.host}:{gw.port}")
    assert out.returncode == 0, out.stderr
    expected = asyncssh.read_public_key(gw.host_key).get_fingerprint()
    assert f'host_key_fingerprint = "{expected}"' in out.stdout.splitlines()
    assert out.stdout.startswith("ssh-ed25519 host key of ")


def test_a_profile_pinned_by_the_pin_output_probes_ok(farm: Path, tmp_path: Path) -> None:
    gw = load_profile(farm).gateway
    pinned = gateload("pin", f"{gw.host}:{gw.port}").stdout
    line = next(ln for ln in pinned.splitlines() if ln.startswith("host_key_fingerprint"))
    fingerprint = tomllib.loads(line)["host_key_fingerprint"]
    path = variant(farm, tmp_path, "pinned", gateway={"host_key": "", "host_key_fingerprint": fingerprint})
    out = gateload("probe", str(path), "--only", "gateway")
    assert out.returncode == 0, out.stdout
    assert f"host key pinned {fingerprint} matches" in out.stdout


def test_host_port_forms() -> None:
    from gateload.errors import InputError
    from gateload.probe import parse_host_port

    assert parse_host_port("127.0.0.1") == ("127.0.0.1", 22)
    assert parse_host_port("localhost:2222") == ("localhost", 2222)
    assert parse_host_port("[::1]:2222") == ("::1", 2222)
    assert parse_host_port("::1") == ("::1", 22)
    for bad in ("127.0.0.1:0", "127.0.0.1:x", ":22", "[::1", "[::1]x"):
        with pytest.raises(InputError):
            parse_host_port(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pin", "192.0.2.1:22"], "not on loopback; pass --allow-remote"),
        (["pin", "127.0.0.1:99999"], "is not HOST[:PORT]"),
        (["pin", "[::1:22"], "is not HOST[:PORT]"),
        (["probe", "no-such-profile.toml"], "profile not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    out = gateload(*args, timeout=30)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


def test_pin_of_something_that_is_not_ssh_is_one_line(farm: Path) -> None:
    url = load_profile(farm).portal.url  # an HTTP server
    out = gateload("pin", url.removeprefix("http://"), "--timeout", "5")
    assert out.returncode == 2
    assert "no host key from" in out.stderr and "SSH" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == ""


def test_probe_refuses_a_remote_target(tmp_path: Path) -> None:
    # 192.0.2.1 is TEST-NET-1: only looked at, never contacted.
    text = (ROOT / "targets/profiles/local-real.toml").read_text().replace("127.0.0.1", "192.0.2.1")
    path = tmp_path / "remote.toml"
    path.write_text(text)
    out = gateload("probe", str(path), timeout=30)
    assert out.returncode == 2 and "--allow-remote" in out.stderr and out.stdout == ""


# --- real gateway software ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_farm() -> Iterator[Any]:
    from real_support import running_farm

    with running_farm("probe", portal_backends=1, gateways=1) as local:
        yield local


@pytest.mark.sshd
def test_probe_of_real_openssh_behind_haproxy(real_farm: Any) -> None:
    path = real_farm.gateway_profile_path
    out = gateload("probe", str(path), "--only", "gateway")
    assert out.returncode == 0, out.stdout + out.stderr
    ok = "\n".join(lines(out.stdout, "ok"))
    assert "matches" in ok and "with the account password" in ok and "server gw-01" in ok
    assert "PTY shell, prompt seen" in ok and "SFTP stat memo.pdf" in ok and "HTTP 200" in ok
    for secret in secrets_of(path):
        assert secret not in out.stdout + out.stderr
    gw = load_profile(path).gateway
    pinned = gateload("pin", f"{gw.host}:{gw.port}")
    expected = asyncssh.read_public_key(gw.host_key).get_fingerprint()
    assert f'host_key_fingerprint = "{expected}"' in pinned.stdout


@pytest.mark.sshd
def test_probe_of_a_real_tls_portal_verifies_its_certificate(real_farm: Any, tmp_path: Path) -> None:
    path = real_farm.portal_profile_path
    out = gateload("probe", str(path), "--only", "portal")
    assert out.returncode == 0, out.stdout + out.stderr
    ok = lines(out.stdout, "ok")
    assert "TLS verified (CA " in ok[0] and ok[0].split()[2].startswith("https://127.0.0.1:")
    assert "server web-a-01" in ok[1]
    # the system CAs do not know the test CA: the probe says so, and what to set
    system = variant(path, tmp_path, "system-ca", portal={"ca_file": ""})
    out = gateload("probe", str(system), "--only", "portal")
    assert out.returncode == 1
    [fail] = lines(out.stdout, "FAIL")
    assert "TLS certificate not verified" in fail and "set portal.ca_file" in fail
    # the explicit opt-out works without the CA, and says so on every probe
    relaxed = variant(path, tmp_path, "no-tls-verify", portal={"ca_file": "", "tls_verify": False})
    out = gateload("probe", str(relaxed), "--only", "portal")
    assert out.returncode == 0, out.stdout
    [warn] = lines(out.stdout, "warn")
    assert "TLS NOT verified (portal.tls_verify = false)" in warn


def test_a_wrong_password_fails_the_logon_step_and_the_gateway_login_without_showing_it(
    farm: Path, tmp_path: Path
) -> None:
    username = load_profile(farm).credentials_path.read_text().splitlines()[1].split(",")[0]
    wrong = "Wrong-Password-4711"
    credentials = tmp_path / "credentials.csv"
    credentials.write_text(f"username,password\n{username},{wrong}\n")
    path = variant(farm, tmp_path, "wrong-password", credentials={"file": str(credentials)})
    out = gateload("probe", str(path))
    assert out.returncode == 1, out.stdout
    portal, gateway = lines(out.stdout, "FAIL")
    assert f"logon as {username}: POST /login: HTTP 401" in portal and "credentials file" in portal
    assert f"authentication as {username}: authentication refused" in gateway
    # after a failed logon the rest of the portal session is skipped, not failed again
    skipped = [line.split()[1:3] for line in lines(out.stdout, "skip")]
    assert skipped == [["portal", w] for w in ("apps:", "launch", "document", "logout:")] + [
        ["gateway", "shell,"]
    ]
    assert wrong not in out.stdout + out.stderr


# --- a portal of another shape: the JSON API example's flow ------------------------------------------


@pytest.fixture(scope="module")
def json_portal(farm: Path) -> Iterator[str]:
    """tests/json_portal.py (bearer token, no ticket) on a free port, with the farm's accounts."""
    import gevent

    creds = load_profile(farm).credentials_path
    script = Path(__file__).with_name("json_portal.py")
    proc = subprocess.Popen([sys.executable, str(script), str(creds)], stdout=subprocess.PIPE, text=True)
    try:
        with gevent.Timeout(20, RuntimeError("json portal did not start within 20 s")):
            line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("ready "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_probe_runs_the_profiles_own_flow_against_a_json_api_portal(
    farm: Path, json_portal: str, tmp_path: Path
) -> None:
    import json
    import urllib.request

    data = tomllib.loads((ROOT / "targets/profiles/example-json-api-portal.toml").read_text())
    reference = tomllib.loads(farm.read_text())
    data["target"]["allow_non_loopback"] = False
    data["portal"]["url"] = json_portal
    data["gateway"] = {
        k: reference["gateway"][k] for k in ("host", "port", "host_key", "prompt", "screen_command")
    }
    data["credentials"] = reference["credentials"]
    path = tmp_path / "json-api.toml"
    path.write_text(tomli_w.dumps(data))
    out = gateload("probe", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    ok = "\n".join(lines(out.stdout, "ok"))
    assert "logon as " in ok and "server api-1" in ok
    assert "with the account's own password" in ok  # no ticket from this portal
    assert "with the account password" in ok and "PTY shell, prompt seen" in ok
    with urllib.request.urlopen(f"{json_portal}/stats", timeout=5) as r:
        stats = json.loads(r.read())
    # the probe logged on and out once (DELETE /api/v1/auth) and left no session behind
    assert stats["POST /api/v1/auth"] == stats["DELETE /api/v1/auth"] == 1 and stats["live_tokens"] == 0, (
        stats
    )
    for secret in secrets_of(path):
        assert secret not in out.stdout + out.stderr


def test_explicit_opt_outs_are_warn_lines_not_failures(farm: Path, tmp_path: Path) -> None:
    path = variant(farm, tmp_path, "no-verify", gateway={"host_key": "", "verify_host_key": False})
    out = gateload("probe", str(path), "--only", "gateway")
    assert out.returncode == 0, out.stdout
    [warn] = lines(out.stdout, "warn")
    real = asyncssh.read_public_key(load_profile(farm).gateway.host_key).get_fingerprint()
    assert f"host key NOT verified (gateway.verify_host_key = false); it is {real}" in warn


def test_probe_logs_on_with_the_mfa_step(reference_farm: Any) -> None:
    path = reference_farm("reference-before", farm__mfa=True, farm__accounts=5)
    assert load_profile(path).farm.mfa  # type: ignore[union-attr]
    out = gateload("probe", str(path), "--only", "portal")
    assert out.returncode == 0, out.stdout
    # login page, password, TOTP: the flow's `when = "mfa"` step ran
    assert any("logon as " in line and "(3 requests" in line for line in lines(out.stdout, "ok")), out.stdout
