"""Strict profile loading: bad keys, types and values are one-line errors naming file, key and fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tomli_w

from gateload.errors import InputError
from gateload.targets.profile import (
    CREDENTIALS_ENV,
    cert_sha256,
    dump_profile,
    format_cert_sha256,
    load_profile,
    profile_to_dict,
)
from gateload.targets.reference.harness import PROFILES_DIR

SHIPPED = sorted(PROFILES_DIR.glob("*.toml"))
BEFORE = PROFILES_DIR / "reference-before.toml"


def _variant(tmp_path: Path, edit: dict[str, object] | None = None, drop: str = "") -> Path:
    """reference-before.toml with dotted keys set (``edit``) or one dotted key removed (``drop``)."""
    data = profile_to_dict(load_profile(BEFORE))
    for dotted, value in (edit or {}).items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[last] = value
    if drop:
        *parents, last = drop.split(".")
        node = data
        for part in parents:
            node = node[part]
        del node[last]
    path = tmp_path / "variant.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _error(path: Path) -> str:
    with pytest.raises(InputError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message, "errors must be one line"
    assert str(path) in message, "errors must name the file"
    return message


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_profiles_load(path: Path) -> None:
    profile = load_profile(path)
    assert profile.target.name
    assert profile.path == path.resolve()


def test_example_real_gateway_documents_a_real_target() -> None:
    profile = load_profile(PROFILES_DIR / "example-real-gateway.toml")
    assert profile.target.kind == "real"
    assert profile.farm is None and profile.server_ids == []
    assert profile.portal.url.startswith("https://")
    assert profile.portal.tls_verify and profile.gateway.verify_host_key
    assert profile.gateway.host_key_fingerprint.startswith("SHA256:")
    # secrets stay out of the profile: credentials come from a file outside the repository
    text = (PROFILES_DIR / "example-real-gateway.toml").read_text()
    assert "password =" not in text and "totp_secret =" not in text
    assert Path(profile.credentials.file).is_absolute() or profile.credentials.file.startswith("~")


def test_reference_profiles_scale_only_the_server_count() -> None:
    before = load_profile(PROFILES_DIR / "reference-before.toml")
    after = load_profile(PROFILES_DIR / "reference-after.toml")
    assert len(before.server_ids) == 4 and len(after.server_ids) == 12
    assert before.farm is not None and after.farm is not None
    assert before.farm.service == after.farm.service
    per_server = {
        (g.workers, g.max_sessions, g.queue_limit, g.speed) for g in before.farm.servers + after.farm.servers
    }
    assert len(per_server) == 1, "every server, old and new, has the same capacity"
    assert before.workload == after.workload


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, {"farm.service.keystrok_ms": 3.0}))
    assert "unknown key 'farm.service.keystrok_ms'" in message
    assert "did you mean 'keystroke_ms'" in message


def test_unknown_top_level_section(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, {"extras.x": 1}))
    assert "unknown key 'extras'" in message and "remove it" in message


def test_wrong_type_names_key_and_expected_type(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, {"gateway.port": "2240"}))
    assert "'gateway.port'" in message and "it must be an integer" in message


def test_wrong_type_in_list_of_tables(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, {"farm.servers.0.workers": 1.5}))
    assert "'farm.servers[0].workers'" in message and "integer" in message


def test_bool_is_not_a_number(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, {"farm.ticket_ttl_s": True}))
    assert "'farm.ticket_ttl_s'" in message and "a number" in message


def test_missing_field_says_what_to_add(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, drop="gateway.port"))
    assert "missing key 'gateway.port'" in message and "add it" in message


def test_literal_value_lists_choices(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, {"farm.balancer": "random"}))
    assert "'farm.balancer'" in message and "'round-robin'" in message and "'least-connections'" in message


def test_cross_field_check_document_must_exist(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, {"workload.documents": ["nope.pdf"]}))
    assert "'workload.documents'" in message and "farm.documents" in message


def test_bad_url(tmp_path: Path) -> None:
    message = _error(_variant(tmp_path, {"portal.url": "127.0.0.1:8440"}))
    assert "'portal.url'" in message and "http(s)://HOST:PORT" in message


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[target\nname = 1\n")
    assert "not valid TOML" in _error(path)


def test_missing_file(tmp_path: Path) -> None:
    assert "profile not found" in _error(tmp_path / "nope.toml")


def test_dump_round_trip_keeps_everything_and_makes_paths_absolute(tmp_path: Path) -> None:
    original = load_profile(BEFORE)
    copy = load_profile(dump_profile(original, tmp_path / "copy.toml"))
    assert (copy.target, copy.portal, copy.workload, copy.link) == (
        original.target,
        original.portal,
        original.workload,
        original.link,
    )
    assert copy.farm is not None and original.farm is not None
    assert (copy.farm.servers, copy.farm.service) == (original.farm.servers, original.farm.service)
    assert Path(copy.credentials.file).is_absolute()
    assert copy.credentials_path == original.credentials_path
    assert copy.resolve(copy.gateway.host_key) == original.resolve(original.gateway.host_key)
    assert copy.resolve(copy.farm.state_dir) == original.resolve(original.farm.state_dir)


def test_credentials_env_var_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "secret.csv"
    monkeypatch.setenv(CREDENTIALS_ENV, str(creds))
    assert load_profile(BEFORE).credentials_path == creds


def test_gateway_ca_file_falls_back_to_the_portals_and_resolves_beside_the_profile(tmp_path: Path) -> None:
    """A TLS gateway is verified by ``gateway.ca_file``, else by the portal's CA, else by the system's."""
    profile = load_profile(BEFORE)
    here = BEFORE.parent
    both = dataclasses.replace(
        profile,
        gateway=dataclasses.replace(profile.gateway, ca_file="gw-ca.pem"),
        portal=dataclasses.replace(profile.portal, ca_file="portal-ca.pem"),
    )
    assert both.gateway_ca_file() == str((here / "gw-ca.pem").resolve())
    portal_only = dataclasses.replace(both, gateway=dataclasses.replace(profile.gateway, ca_file=""))
    assert portal_only.gateway_ca_file() == str((here / "portal-ca.pem").resolve())
    absolute = dataclasses.replace(
        both, gateway=dataclasses.replace(profile.gateway, ca_file=str(tmp_path / "x.pem"))
    )
    assert absolute.gateway_ca_file() == str(tmp_path / "x.pem")
    neither = dataclasses.replace(portal_only, portal=dataclasses.replace(profile.portal, ca_file=""))
    assert neither.gateway_ca_file() == ""


def test_an_rdp_certificate_pin_is_checked_for_form_and_protocol(tmp_path: Path) -> None:
    digest = bytes(range(32))
    pin = format_cert_sha256(digest)
    assert pin.startswith("00:01:02:") and len(pin) == 95 and cert_sha256(pin) == digest
    ok = load_profile(
        _variant(tmp_path, {"gateway.protocol": "rdp", "gateway.cert_fingerprint": pin.lower()})
    )
    assert cert_sha256(ok.gateway.cert_fingerprint) == digest  # openssl's upper case or not
    short = _error(_variant(tmp_path, {"gateway.protocol": "rdp", "gateway.cert_fingerprint": pin[:-3]}))
    assert (
        "'gateway.cert_fingerprint' must be 32 hex bytes" in short and "gateload pin --protocol rdp" in short
    )
    ssh = _error(_variant(tmp_path, {"gateway.cert_fingerprint": pin}))
    assert "'gateway.cert_fingerprint' is for protocol rdp" in ssh
