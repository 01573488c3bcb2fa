"""The operations catalogue and the remote-session seam (issue 12 part 3).

- a real in-process run's meta.json carries the catalogue of its user classes, and the analysis takes
  the paced operations, the logon operation and the aggregates from it;
- a second protocol's catalogue (a fake SSL-VPN) flows through the analysis unchanged: the same
  samples under VPN names give the same numbers, verdicts and report rows as under the SSH names;
- runs written before the catalogue existed still load, with the SSH catalogue;
- a new protocol is one module: it registers itself, and HomeofficeUser composes it with the portal.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import gevent
import pytest
from locust.env import Environment
from locust.event import Events
from test_recorder import meta_of, parsed
from users_support import FAST, environment, wait_until

from gateload.analysis.acceptance import Acceptance, parse_acceptance
from gateload.analysis.catalogue import LEGACY, Catalogue, Operation
from gateload.analysis.compare import check_runs
from gateload.analysis.metrics import analyze_run
from gateload.analysis.runs import load_run
from gateload.analysis.synthetic import DEFAULT_MIX, SynthSpec, write_run
from gateload.errors import InputError
from gateload.locustfiles.lib import options, remote, runfolder
from gateload.locustfiles.lib.catalogues import run_catalogue
from gateload.locustfiles.lib.gateway import SSH_ACTIVITIES, SSH_CATALOGUE, SSHSession
from gateload.locustfiles.lib.portal import PortalUser
from gateload.locustfiles.lib.remoteuser import GatewayUser
from gateload.locustfiles.lib.runtime import target_for
from gateload.locustfiles.lib.session import HomeofficeUser
from gateload.targets.profile import load_profile
from gateload.targets.reference.harness import write_profile_variant

BOOT = 200

# --- a fake second protocol: an SSL-VPN whose tunnel-up is the logon and whose ping is paced ----------

VPN = Catalogue(
    ("vpn",),
    (
        Operation("VPN", "tunnel_up", "login form + CONNECT", roles=("logon",), aggregate=True),
        Operation("VPN", "session", "tunnel up to down", roles=("session",), aggregate=True),
        Operation(
            "VPN",
            "ping",
            "paced ICMP-like echo through the tunnel",
            paced=True,
            rate_from="workload.typing_interval_ms",
            activities=("typing",),
            roles=("echo",),
        ),
        *(Operation("VPN", o.name, activities=("tunnel",)) for o in DEFAULT_MIX),
    ),
)
SMALL = SynthSpec(steps=((10, 20.0), (30, 20.0), (60, 20.0)), ramp_s=2.0, usl=(30.0, 0.03, 0.001))
SMALL = SMALL.with_(paced_rate=0.5, session_s=10.0, seed=7)
# The same samples under VPN names: every operation of the mix renamed, the paced op and the SESSION rows.
AS_VPN = SMALL.with_(
    ops=tuple(replace(o, type="VPN") for o in DEFAULT_MIX),
    keystroke_op="VPN ping",
    logon_op="VPN tunnel_up",
    session_op="VPN session",
    catalogue=VPN,
)
RENAME = {o.key: f"VPN {o.name}" for o in DEFAULT_MIX} | {
    "SSH keystroke": "VPN ping",
    "SESSION logon": "VPN tunnel_up",
    "SESSION session": "VPN session",
}


def _acceptance(echo: str) -> Acceptance:
    return parse_acceptance(
        {
            "load": {"reference_users": 30},
            "logon": {"max_p95_ms": 5000.0},
            "sla": {echo: 100.0},
            "errors": {"max_rate": 0.05},
        }
    )


# --- the data model -----------------------------------------------------------------------------------


def test_catalogue_round_trips_through_json_and_answers_roles() -> None:
    again = Catalogue.from_json(json.loads(json.dumps(VPN.to_json())))
    assert again == VPN
    assert (VPN.logon, VPN.echo, VPN.role("session")) == ("VPN tunnel_up", "VPN ping", "VPN session")
    assert VPN.aggregates == {"VPN tunnel_up", "VPN session"}
    assert [o.key for o in VPN.paced] == ["VPN ping"]
    merged = Catalogue.merge([LEGACY, VPN])
    assert merged.logon == "SESSION logon"  # the first declared wins a role
    assert merged.protocols == ("session", "portal", "ssh", "vpn")
    with pytest.raises(ValueError, match="declared twice"):
        Catalogue(("x",), (Operation("X", "a"), Operation("X", "a")))
    with pytest.raises(ValueError, match="unknown role"):
        Catalogue(("x",), (Operation("X", "a", roles=("typing",)),))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([], "must be an object with an 'operations' list"),
        ({"operations": [{"type": "VPN"}]}, "operations[0].name: must be a non-empty string"),
        ({"operations": [{"type": "VPN", "name": "x", "roles": "logon"}]}, "roles: must be a list"),
        ({"operations": [{"type": "V", "name": "x", "roles": ["boss"]}]}, "unknown role 'boss'"),
    ],
)
def test_a_damaged_catalogue_in_meta_json_is_a_one_line_error(
    tmp_path: Path, data: Any, problem: str
) -> None:
    run_dir = write_run(SMALL.with_(steps=((5, 10.0),), extra_meta={"catalogue": data}), tmp_path)
    with pytest.raises(InputError) as err:
        load_run(run_dir)
    message = str(err.value)
    assert problem in message and "meta.json" in message and "fix or remove" in message
    assert "\n" not in message


def test_the_live_ssh_catalogues_agree_with_the_one_old_runs_get(fast_profile) -> None:
    """What runs without a catalogue are read with is what gateload's SSH users record today."""
    profile = fast_profile()
    live = run_catalogue([HomeofficeUser, PortalUser, GatewayUser], profile)
    assert live is not None

    def shape(c: Catalogue) -> list[tuple[Any, ...]]:
        return [(o.key, o.paced, o.rate_from, o.activities, o.roles, o.aggregate) for o in c.operations]

    assert shape(live) == shape(LEGACY)
    assert GatewayUser.operations(profile) == SSH_CATALOGUE
    # LEGACY is what old runs could record; "throttled" (sshd MaxStartups) came after them
    assert set(SSH_CATALOGUE.errors()) - {"throttled"} <= set(LEGACY.errors())
    assert "throttled" in SSH_CATALOGUE.get("SSH connect").errors  # type: ignore[union-attr]


def test_the_portals_operations_are_its_flows_sample_names() -> None:
    profile = load_profile(Path(__file__).parent.parent / "targets/profiles/example-json-api-portal.toml")
    portal = PortalUser.operations(profile)
    assert [o.key for o in portal.operations][:2] == ["HTTP POST /api/v1/auth", "HTTP POST /api/v1/auth/otp"]
    assert [o.key for o in portal.operations if "document" in o.activities] == [
        "HTTP GET /api/v1/files/[doc]"
    ]
    assert "HTTP GET /login" not in {o.key for o in HomeofficeUser.operations(profile).operations}


# --- a real run ---------------------------------------------------------------------------------------


def test_meta_json_of_a_real_run_carries_the_catalogue_and_analysis_uses_it(
    reference_farm, tmp_path: Path
) -> None:
    farm = reference_farm("reference-before", **FAST)
    profile = load_profile(farm)
    ns = parsed("--results-dir", str(tmp_path), "--label", "cat", "--profile", str(farm), "-u", "3")
    env = Environment(user_classes=[HomeofficeUser], events=Events(), parsed_options=ns)
    env.create_local_runner()
    controller = runfolder.attach(env)
    sessions = []
    env.events.request.add_listener(
        lambda request_type, name, exception, **_kw: (
            sessions.append(1) if (request_type, name, exception) == ("SESSION", "session", None) else None
        )
    )
    try:
        env.runner.start(3, spawn_rate=3)
        # Six waves of three sessions (~0.3 s each): the steady window (MSER-5 may cut up to half of the
        # step after its ramp, the stop a fifth of the rest) must hold a logon's start; after two waves
        # it was 0.37 s long and held none (busy-core run 45).
        assert wait_until(lambda: len(sessions) >= 18, 60), "18 whole sessions within 60 s"
        env.runner.stop()
        gevent.sleep(0)
    finally:
        env.runner.quit()
    meta = meta_of(controller.last_run_dir)
    assert meta["status"] == "completed"
    assert meta["catalogue"] == HomeofficeUser.operations(profile).to_json()
    assert {o["type"] + " " + o["name"] for o in meta["catalogue"]["operations"]} >= {
        "SESSION logon",
        "SSH keystroke",
        "HTTP POST /api/launch",
    }
    assert meta["paced"] == {"SSH keystroke": pytest.approx(1000.0 / profile.workload.typing_interval_ms)}

    run = load_run(controller.last_run_dir)
    assert run.catalogue == HomeofficeUser.operations(profile)
    aggregates = {op for op, agg in zip(run.samples.ops, run.samples.op_is_session, strict=True) if agg}
    assert aggregates == {"SESSION logon", "SESSION session"}
    stats = analyze_run(run, n_boot=BOOT)
    step = stats.steps[0]
    assert step.logon == "SESSION logon" and step.ops["SESSION logon"].count >= 6
    assert "SSH keystroke" in step.paced and step.paced["SSH keystroke"].rate.planned == pytest.approx(100.0)
    assert math.isfinite(step.sessions.value) and step.sessions.value > 0


# --- a second protocol through the analysis -----------------------------------------------------------


def test_a_second_protocols_catalogue_flows_through_the_analysis_unchanged(tmp_path: Path) -> None:
    ssh_dir = write_run(SMALL, tmp_path / "ssh")
    vpn_dir = write_run(AS_VPN, tmp_path / "vpn")
    vpn = load_run(vpn_dir)
    assert vpn.catalogue == VPN and vpn.paced == {"VPN ping": 0.5}
    assert not any(op.startswith(("SSH", "SESSION")) for op in vpn.samples.ops)

    ssh_stats, vpn_stats = analyze_run(load_run(ssh_dir), n_boot=BOOT), analyze_run(vpn, n_boot=BOOT)
    for s, v in zip(ssh_stats.steps, vpn_stats.steps, strict=True):
        assert v.logon == "VPN tunnel_up" and set(v.paced) == {"VPN ping"}
        assert v.throughput.value == s.throughput.value  # aggregates (tunnel_up, session) not counted
        assert v.sessions.value == s.sessions.value > 0  # sessions/s come from the logon role
        assert v.all.count == s.all.count
        assert v.paced["VPN ping"].corrected["p95"].value == s.paced["SSH keystroke"].corrected["p95"].value
        assert v.paced["VPN ping"].rate.achieved == s.paced["SSH keystroke"].rate.achieved
        assert {RENAME[k]: o.q["p95"].value for k, o in s.ops.items()} == {
            k: o.q["p95"].value for k, o in v.ops.items()
        }

    verdicts = {}
    for name, run_dir, echo in (("ssh", ssh_dir, "SSH keystroke"), ("vpn", vpn_dir, "VPN ping")):
        out = tmp_path / f"report-{name}"
        verdicts[name] = check_runs(run_dir, _acceptance(echo), out, n_boot=BOOT)
        assert (out / "report.html").is_file()
    ssh_v, vpn_v = verdicts["ssh"], verdicts["vpn"]
    assert [(c.name.replace("SSH keystroke", "VPN ping"), c.verdict, c.estimate) for c in ssh_v.criteria] == [
        (c.name, c.verdict, c.estimate) for c in vpn_v.criteria
    ]
    logon = next(c for c in vpn_v.criteria if c.name == "logon_p95")
    assert "VPN tunnel_up" in logon.description
    rows = vpn_v.metrics["operations"]
    assert rows["VPN ping"]["paced"] and not rows["VPN http"]["paced"]
    summary = (tmp_path / "report-vpn" / "summary.md").read_text()
    assert "sla_p95[VPN ping]" in summary and "SSH" not in summary


def test_the_catalogue_alone_makes_an_operation_paced(tmp_path: Path) -> None:
    """meta.json without a planned rate: the catalogue still says the ping is paced (rate from its plan)."""
    run = load_run(write_run(AS_VPN.with_(extra_meta={"paced": {}}), tmp_path))
    assert run.paced == {}
    step = analyze_run(run, n_boot=BOOT).steps[1]
    ping = step.paced["VPN ping"]
    assert ping.rate.planned == pytest.approx(0.5, rel=0.2)  # read off the intended starts
    assert ping.corrected["p95"].value >= step.ops["VPN ping"].q["p95"].value


# --- runs from before the catalogue --------------------------------------------------------------------


def test_a_run_without_catalogue_loads_with_the_ssh_one(tmp_path: Path) -> None:
    old_dir = write_run(SMALL.with_(catalogue=None), tmp_path / "old")
    new_dir = write_run(SMALL, tmp_path / "new")
    assert "catalogue" not in json.loads((old_dir / "meta.json").read_text())
    old = load_run(old_dir)
    assert old.catalogue == LEGACY
    a, b = analyze_run(old, n_boot=BOOT), analyze_run(load_run(new_dir), n_boot=BOOT)
    for s, t in zip(a.steps, b.steps, strict=True):
        assert s.logon == "SESSION logon" and set(s.paced) == {"SSH keystroke"}
        assert s.ops["SESSION logon"].q["p95"].value == t.ops["SESSION logon"].q["p95"].value
        assert s.throughput.value == t.throughput.value


# --- the seam: a protocol is one module ----------------------------------------------------------------

FAKE_MODULE = '''
"""A fake SSL-VPN protocol module: what issue 13 adds for ocserv, in miniature."""
import time

from gateload.analysis.catalogue import Catalogue, Operation
from gateload.locustfiles.lib import remote
from gateload.locustfiles.lib.runtime import fire

CATALOGUE = Catalogue(
    ("fakevpn",),
    (
        Operation("VPN", "tunnel_up", errors=("refused",)),
        Operation("VPN", "http", activities=("tunnel",)),
        Operation("VPN", "reconnect"),
    ),
)


class FakeVPNSession:
    activities = ("tunnel",)

    def __init__(self, environment, target, user_id):
        self.environment, self.user_id = environment, user_id
        self.server = None
        self.up = False
        self.usernames = []

    usable = property(lambda self: self.up)
    dropped = property(lambda self: False)

    def _fire(self, name, error=None):
        fire(self.environment, request_type="VPN", name=name, start_time=time.time(), response_time=1.0,
             user_id=self.user_id, exception=error, server=self.server)

    def logon(self, username, secret, *, record=True):
        self.server, self.up = "vpn-1", True
        self.usernames.append(username)
        if record:
            self._fire("tunnel_up")
        return None

    def record_idle_drop(self):
        pass

    def record_reconnect(self, start, duration_ms, error):
        self._fire("reconnect", error)

    def run_activity(self, name, document):
        assert name in self.activities, name
        self._fire("http")
        return True

    def close(self):
        self.up = False

    def abort(self):
        self.up = False


remote.register("fakevpn", CATALOGUE, FakeVPNSession)
'''


def test_a_new_protocol_is_one_module_that_homeoffice_user_composes(
    reference_farm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fakevpn_protocol.py").write_text(textwrap.dedent(FAKE_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(remote.MODULES, "fakevpn", "fakevpn_protocol")
    monkeypatch.delitem(remote._registry, "fakevpn", raising=False)
    monkeypatch.delitem(sys.modules, "fakevpn_protocol", raising=False)
    farm = reference_farm("reference-before", **FAST)
    # the gateway's own settings stay; only the protocol and a mix the fake serves (tunnel + documents)
    variant = write_profile_variant(
        farm,
        tmp_path / "vpn.toml",
        {"gateway.protocol": "fakevpn", "workload.mix": {"tunnel": 1.0, "document": 1.0, "typing": 5.0}},
    )
    profile = load_profile(variant)
    fake = remote.for_profile(profile)
    assert fake.catalogue.protocols == ("fakevpn",)
    assert isinstance(fake.factory(None, None, 1), remote.RemoteSession)
    ops = HomeofficeUser.operations(profile)
    assert [o.key for o in ops.operations if o.type == "VPN"] == [
        "VPN tunnel_up",
        "VPN http",
        "VPN reconnect",
    ]
    assert ops.logon == "SESSION logon" and ops.echo is None
    # a mix this protocol and the portal cannot serve is refused before load starts, in one line
    typing_only = write_profile_variant(variant, tmp_path / "typing.toml", {"workload.mix": {"typing": 1.0}})
    with pytest.raises(InputError) as err:
        options.resolve(parsed("--profile", str(typing_only), "--results-dir", str(tmp_path / "r")))
    assert "no weight to an activity protocol 'fakevpn' serves; weight one of tunnel, document" in str(
        err.value
    )

    run = environment(variant, HomeofficeUser)
    runner = run.env.create_local_runner()
    try:
        runner.start(2, spawn_rate=2)
        wait_until(lambda: run.count("SESSION", "session") >= 4, 60)
    finally:
        runner.quit()
    assert not run.user_errors, run.user_errors
    assert run.count("SESSION", "session") >= 4 and run.count("VPN", "tunnel_up") >= 4
    assert run.count("VPN", "http") >= 1 and run.count("HTTP", "POST /api/launch") >= 4
    assert run.count("SSH", "connect") == 0 and run.count("SSH", "keystroke") == 0  # typing is not served
    assert all(s["context"]["server"] in (None, "vpn-1") or s["request_type"] == "HTTP" for s in run.samples)

    # GatewayUser (no portal) speaks the profile's protocol too
    assert GatewayUser.operations(profile) == fake.catalogue
    gw = environment(variant, GatewayUser)
    runner = gw.env.create_local_runner()
    try:
        runner.start(2, spawn_rate=2)
        wait_until(lambda: gw.count("VPN", "http") >= 4, 30)
    finally:
        runner.quit()
    assert not gw.user_errors, gw.user_errors
    assert gw.count("VPN", "tunnel_up") == 2 and gw.count("VPN", "http") >= 4
    assert {s["request_type"] for s in gw.samples} == {"VPN"}


def test_ssh_session_is_a_remote_session(fast_profile, tmp_path: Path) -> None:
    # accounts of its own: the reference profile's credentials file exists only once a farm has run
    accounts = tmp_path / "credentials.csv"
    accounts.write_text("username,password\nu1,p1\n")
    profile = fast_profile(credentials__file=str(accounts))
    env = environment(profile.path, GatewayUser).env
    session = SSHSession(env, target_for(env), 1)
    assert isinstance(session, remote.RemoteSession)
    assert (
        remote.for_profile(profile).factory is SSHSession
        and remote.protocol("ssh").catalogue == SSH_CATALOGUE
    )
    assert (
        session.activities == SSH_ACTIVITIES == ("typing", "screen", "sftp_get", "sftp_put", "tunnel", "exec")
    )
    assert not session.usable and not session.dropped and session.server is None


def test_an_unknown_protocol_is_a_one_line_error(fast_profile, tmp_path: Path) -> None:
    profile = fast_profile()
    bad = replace(profile, gateway=replace(profile.gateway, protocol="carrierpigeon"))
    with pytest.raises(InputError) as err:
        remote.for_profile(bad)
    message = str(err.value)
    assert "gateway.protocol 'carrierpigeon'" in message and "use one of" in message and "ssh" in message
    with pytest.raises(InputError, match=r"gateway\.protocol.*lower case"):
        write_profile_variant("reference-before", tmp_path / "upper.toml", {"gateway.protocol": "SSH"})
