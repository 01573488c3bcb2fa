"""One account per concurrent user: the lease and partition logic, the farm's per-account login limit,
the pre-flight check, and real Locust runs over two processes against a farm allowing one login per
account (the farm's counters prove the accounts in use at once were all distinct)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pandas as pd
import pytest
from locust.runners import WorkerRunner
from real_support import private_dir
from users_support import FAST

from gateload.analysis.schema import SAMPLES_DIR
from gateload.errors import InputError
from gateload.locustfiles.lib import runfolder, runtime
from gateload.locustfiles.lib.accounts import AccountLeases, Partition, accounts_needed, check_accounts
from gateload.locustfiles.lib.errors import classify
from gateload.targets.local.process import free_port
from gateload.targets.profile import Profile, load_profile
from gateload.targets.reference.farm import ReferenceFarm
from gateload.targets.reference.logins import AccountLogins
from gateload.targets.reference.state import add_authorized_key

REPO = Path(__file__).resolve().parent.parent
LOCUST = str(Path(sys.executable).with_name("locust"))
USERS = 12
#: A farm with exactly one account per user, each allowed one SSH session at a time.
ONE_LOGIN = {**FAST, "farm__accounts": USERS, "farm__max_sessions_per_account": 1}


# --- the lease and the partition (no Locust) ------------------------------------------------------


def test_partitions_stride_the_accounts_without_overlap() -> None:
    shares = [set(Partition(slot, 3).indices(20)) for slot in range(3)]
    assert [len(s) for s in shares] == [7, 7, 6]
    assert set().union(*shares) == set(range(20))
    assert not (shares[0] & shares[1] or shares[0] & shares[2] or shares[1] & shares[2])
    with pytest.raises(ValueError):
        Partition(3, 3)


def test_a_user_takes_the_lowest_free_account_and_gives_it_back() -> None:
    leases = AccountLeases(10)
    share = Partition(1, 2)  # accounts 1, 3, 5, 7, 9
    assert [leases.acquire(share) for _ in range(3)] == [1, 3, 5]
    leases.release(3)
    assert leases.acquire(share) == 3  # the freed slot is reused before a new one
    leases.release(99)  # never leased: ignored
    assert leases.held == 3 and leases.shared == 0


def test_an_exhausted_share_shares_the_least_held_account_and_counts_it() -> None:
    leases = AccountLeases(4)
    share = Partition(0, 2)  # accounts 0 and 2
    assert [leases.acquire(share) for _ in range(4)] == [0, 2, 0, 2]
    assert leases.shared == 2 and leases.holders(0) == 2
    leases.release(0)
    assert leases.holders(0) == 1


def test_users_starting_and_stopping_at_random_never_hold_one_account_twice() -> None:
    """Seeded step-shape churn on two workers: within the pre-flight bound no account is ever shared."""
    rng = random.Random(20261203)
    accounts, workers = 25, 2
    per_worker = accounts // workers  # the most users the check lets one worker have
    pools = [AccountLeases(accounts) for _ in range(workers)]
    running: list[list[int]] = [[] for _ in range(workers)]
    for _ in range(5000):
        w = rng.randrange(workers)
        if running[w] and (len(running[w]) == per_worker or rng.random() < 0.5):
            pools[w].release(running[w].pop(rng.randrange(len(running[w]))))
        else:
            running[w].append(pools[w].acquire(Partition(w, workers)))
        in_use = [i for held in running for i in held]
        assert len(in_use) == len(set(in_use))
    assert all(p.shared == 0 for p in pools)


def test_accounts_needed_fits_every_workers_share() -> None:
    assert accounts_needed(40, 1) == 40
    assert accounts_needed(21, 2) == 22  # one worker gets 11 users; 21 accounts give one share 10
    assert accounts_needed(260, 2) == 260
    for users in range(1, 30):
        for workers in range(1, 5):
            n = accounts_needed(users, workers)
            most_users = -(-users // workers)
            assert min(len(Partition(s, workers).indices(n)) for s in range(workers)) >= most_users
            if n > 1:  # and one account fewer is too few for some worker
                fewer = min(len(Partition(s, workers).indices(n - 1)) for s in range(workers))
                assert fewer < most_users or n - 1 < users


def test_too_few_accounts_is_one_line_naming_the_fix() -> None:
    check_accounts(40, 40, 1, "creds.csv")
    with pytest.raises(InputError) as err:
        check_accounts(40, 20, 1, "creds.csv")
    assert str(err.value).startswith("40 users need 40 accounts; creds.csv has 20: add accounts or lower -u")
    with pytest.raises(InputError) as err:
        check_accounts(21, 21, 2, "creds.csv")
    assert "over 2 workers (11 accounts per worker) need 22 accounts" in str(err.value)
    assert "\n" not in str(err.value)
    check_accounts(6, 3, 1, "creds.csv", per_account=2)  # a gateway allowing 2 sessions per account
    with pytest.raises(InputError) as err:
        check_accounts(7, 3, 1, "creds.csv", per_account=2)
    assert str(err.value).startswith("7 users at 2 per account need 4 accounts; creds.csv has 3")
    with pytest.raises(InputError, match="--users-per-account is 0; give 1 or more"):
        check_accounts(1, 3, 1, "creds.csv", per_account=0)


def test_users_per_account_fills_the_least_held_account_up_to_its_limit() -> None:
    leases = AccountLeases(6)
    share = Partition(0, 2)  # accounts 0, 2, 4
    taken = [leases.acquire(share, per_account=2) for _ in range(6)]
    assert taken == [0, 2, 4, 0, 2, 4] and leases.shared == 0  # spread, then doubled up
    assert leases.acquire(share, per_account=2) == 0 and leases.shared == 1  # past the limit: counted
    assert accounts_needed(7, 1, per_account=2) == 4
    assert accounts_needed(21, 2, per_account=2) == 12  # 11 users on one worker need 6 accounts


def _worker_env(client_id: str, index: int, info: dict[str, Any] | None) -> Namespace:
    runner = WorkerRunner.__new__(WorkerRunner)  # only the attributes partition_of reads
    runner.client_id, runner.worker_index, runner.greenlet = client_id, index, None
    options = Namespace(expect_workers=2, **({runfolder.RUN_INFO: info} if info else {}))
    return Namespace(runner=runner, parsed_options=options)


def test_a_worker_finds_its_share_in_the_run_info_the_master_sent() -> None:
    assert runtime.RUN_INFO == runfolder.RUN_INFO
    info = {"id": "r", "t0": 0.0, "slots": {"host_a": 0, "host_b": 1}}
    assert runtime.partition_of(_worker_env("host_b", 0, info)) == Partition(1, 2)
    assert runtime.partition_of(_worker_env("host_a", 5, info)) == Partition(0, 2)
    # joined after the start (no slot): its Locust index, over the workers known
    assert runtime.partition_of(_worker_env("host_c", 3, info)) == Partition(1, 2)
    assert runtime.partition_of(Namespace(runner=None, parsed_options=None)) == Partition()


# --- the farm's per-account login limit -------------------------------------------------------------


def _farm_run(profile: Profile, scenario: Callable[[ReferenceFarm], Any]) -> Any:
    async def main() -> Any:
        async with ReferenceFarm(profile, seed=5) as farm:
            return await scenario(farm)

    return asyncio.run(main())


def _connect(farm: ReferenceFarm, username: str, password: str) -> Any:
    return asyncssh.connect(
        "127.0.0.1",
        farm.gateway_port,
        username=username,
        password=password,
        known_hosts=None,
        client_keys=None,
        agent_path=None,
    )


def test_farm_refuses_a_second_concurrent_login_of_one_account(fast_profile: Callable[..., Profile]) -> None:
    profile = fast_profile(farm__max_sessions_per_account=1, farm__static_credentials=True)

    async def scenario(farm: ReferenceFarm) -> tuple[BaseException, dict[str, int]]:
        first, other = list(farm.state.accounts.values())[:2]
        async with _connect(farm, first.username, first.password):
            async with _connect(farm, other.username, other.password):  # another account: fine
                pass
            with pytest.raises(asyncssh.DisconnectError) as refused:
                async with _connect(farm, first.username, first.password):
                    pass
        for _ in range(500):  # the server sees the close within a few loop turns (bounded: 5 s)
            if farm.metrics_snapshot()["logins"]["open_sessions"] == 0:
                break
            await asyncio.sleep(0.01)
        async with _connect(farm, first.username, first.password):  # closed: the account may log on again
            pass
        return refused.value, farm.metrics_snapshot()["logins"]

    refused, logins = _farm_run(profile, scenario)
    assert refused.code == asyncssh.DISC_TOO_MANY_CONNECTIONS
    assert classify(refused) == "refused"
    assert logins["refused"] == 1 and logins["logins"] == 3
    assert logins["peak_per_account"] == 1 and logins["peak_accounts_in_use"] == 2


def test_farm_limits_public_key_logons_too(fast_profile: Callable[..., Profile], ssh_keypair: Any) -> None:
    """A key logon has no password check to refuse in: over the limit it is closed right after
    authentication, as sshd closes a session pam_limits refuses; the client cannot open a channel."""
    profile = fast_profile(farm__max_sessions_per_account=1)
    key = asyncssh.read_private_key(ssh_keypair.private_path)

    async def scenario(farm: ReferenceFarm) -> tuple[str, BaseException, dict[str, int]]:
        add_authorized_key(farm.state_dir, ssh_keypair.public_line)
        opts: dict[str, Any] = {"known_hosts": None, "client_keys": [key], "agent_path": None}
        async with asyncssh.connect("127.0.0.1", farm.gateway_port, username="user0001", **opts) as first:
            echoed = (await first.run("echo one", check=True)).stdout
            with pytest.raises(asyncssh.Error) as refused:
                async with asyncssh.connect("127.0.0.1", farm.gateway_port, username="user0001", **opts) as c:
                    await c.run("echo two", check=True)
            return str(echoed), refused.value, farm.metrics_snapshot()["logins"]

    echoed, refused, logins = _farm_run(profile, scenario)
    assert echoed == "one\n"
    assert isinstance(refused, asyncssh.DisconnectError | asyncssh.ChannelOpenError)
    assert logins["logins"] == 1 and logins["refused"] == 1 and logins["open_sessions"] == 1


def test_farm_default_allows_any_number_of_logins(fast_profile: Callable[..., Profile]) -> None:
    profile = fast_profile(farm__static_credentials=True)
    assert profile.farm is not None and profile.farm.max_sessions_per_account == 0

    async def scenario(farm: ReferenceFarm) -> dict[str, int]:
        account = next(iter(farm.state.accounts.values()))
        async with (
            _connect(farm, account.username, account.password),
            _connect(farm, account.username, account.password),
        ):
            return farm.metrics_snapshot()["logins"]

    logins = _farm_run(profile, scenario)
    assert logins["peak_per_account"] == 2 and logins["refused"] == 0


def test_a_negative_limit_is_bad_input() -> None:
    with pytest.raises(InputError, match=r"farm\.max_sessions_per_account is -1"):
        AccountLogins(-1)


# --- real Locust runs -------------------------------------------------------------------------------


def _farm_logins(profile_path: Path) -> dict[str, Any]:
    url = load_profile(profile_path).portal.url.rstrip("/") + "/metrics?format=json"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def _locust(args: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LOCUST, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s)


def _assert_distinct_accounts(before: dict[str, Any], after: dict[str, Any], samples: pd.DataFrame) -> None:
    logins = after["logins"]
    assert logins["limit"] == 1
    # Any second concurrent logon of one account would have been refused and counted here.
    assert logins["refused"] == before["logins"]["refused"] == 0
    assert logins["logins"] >= before["logins"]["logins"] + USERS  # every user logged on
    # 12 distinct accounts held sessions at the same moment: every user had its own.
    assert logins["peak_accounts_in_use"] == USERS
    assert len(samples) > 0 and not (~samples["success"]).any()
    users = samples[["worker", "user_id"]].drop_duplicates()
    assert len(users) == USERS and samples["worker"].nunique() == 2


@pytest.mark.load
def test_two_processes_give_every_user_its_own_account(reference_farm: Callable[..., Path]) -> None:
    # Sessions of up to 200 activities 0.2-0.4 s apart: a user whose first (random length) session is
    # short logs off and on once, then holds its login past the run's end, so at some moment during
    # the run all 12 are logged on at once (at most 12 short logon gaps cannot cover ~7 s).
    slow = {
        **ONE_LOGIN,
        "workload__activities_per_session": 200,
        "workload__think_min_s": 0.2,
        "workload__think_max_s": 0.4,
    }
    profile = reference_farm("reference-before", **slow)
    before = _farm_logins(profile)
    with private_dir("accounts") as work:
        args = [
            "-f", "locustfiles/homeoffice.py", "--headless", "-u", str(USERS), "-r", str(USERS),
            "-t", "8s", "--processes", "2", "--profile", str(profile),
            "--results-dir", str(work), "--label", "accounts", "--run-id", "p2", "HomeofficeUser",
        ]  # fmt: skip
        proc = _locust(args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        samples = pd.read_parquet(work / "accounts" / "p2" / SAMPLES_DIR)
    _assert_distinct_accounts(before, _farm_logins(profile), samples)


@pytest.mark.load
def test_the_farm_counters_catch_users_sharing_an_account(reference_farm: Callable[..., Path]) -> None:
    """The control: 12 users on 6 accounts at 2 per account, on a one-login farm, are refused and counted."""
    profile = reference_farm("reference-before", **{**ONE_LOGIN, "farm__accounts": USERS // 2})
    with private_dir("accounts-shared") as work:
        args = [
            "-f", "locustfiles/homeoffice.py", "--headless", "-u", str(USERS), "-r", str(USERS),
            "-t", "6s", "--processes", "2", "--profile", str(profile), "--users-per-account", "2",
            "--exit-code-on-error", "0", "--results-dir", str(work), "--label", "shared", "--run-id", "s",
            "GatewayUser",
        ]  # fmt: skip
        proc = _locust(args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        samples = pd.read_parquet(work / "shared" / "s" / SAMPLES_DIR)
    logins = _farm_logins(profile)["logins"]
    failed = samples[~samples["success"]]
    assert logins["refused"] > 0 and logins["peak_accounts_in_use"] <= USERS // 2
    assert len(failed) > 0 and set(failed["error"]) == {"refused"}
    assert set(failed["name"]) <= {"connect", "reconnect"}


@pytest.mark.load
def test_master_and_two_workers_give_every_user_its_own_account(reference_farm: Callable[..., Path]) -> None:
    profile = reference_farm("reference-before", **ONE_LOGIN, farm__static_credentials=True)
    before = _farm_logins(profile)
    port = free_port()
    common = ["-f", "locustfiles/homeoffice.py", "--profile", str(profile)]
    with private_dir("accounts-dist") as work:
        logs = [(work / f"{name}.log").open("wb") for name in ("master", "worker-0", "worker-1")]
        master_args = [
            "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
            "--expect-workers", "2", "--expect-workers-max-wait", "60", "--headless",
            "-u", str(USERS), "-r", str(USERS), "-t", "8s",
            "--results-dir", str(work), "--label", "accounts", "--run-id", "mw", "GatewayUser",
        ]  # fmt: skip
        worker_args = ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
        procs = [
            subprocess.Popen([LOCUST, *common, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            for args, log in zip([master_args, worker_args, worker_args], logs, strict=True)
        ]
        try:
            codes = [procs[0].wait(120), procs[1].wait(30), procs[2].wait(30)]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            for log in logs:
                log.close()
        text = {p.name: p.read_text(errors="replace")[-2000:] for p in work.glob("*.log")}
        assert codes == [0, 0, 0], text
        logged = "".join(
            (work / f"{name}.log").read_text(errors="replace") for name in ("worker-0", "worker-1")
        )
        # the master checked the accounts against the 2 workers at the start; no worker had to share
        assert "share accounts" not in (work / "master.log").read_text(errors="replace") + logged
        samples = pd.read_parquet(work / "accounts" / "mw" / SAMPLES_DIR)
    _assert_distinct_accounts(before, _farm_logins(profile), samples)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shape", "step", "--step-users", "10,25", "--step-hold", "5"], "25 users need 25 accounts; "),
        (
            ["-u", "21", "-r", "21", "-t", "5s", "--processes", "2"],
            "21 users over 2 workers (11 accounts per",
        ),
    ],
    ids=["step-peak", "two-processes"],
)
def test_too_few_accounts_stops_a_headless_run_before_any_load(
    reference_farm: Callable[..., Path], args: list[str], message: str
) -> None:
    profile = reference_farm("reference-before", **FAST)  # 20 accounts
    lower = "--step-users" if "step" in args else "-u"
    before = _farm_logins(profile)
    with private_dir("accounts-few") as work:
        t0 = time.monotonic()
        argv = ["-f", "locustfiles/homeoffice.py", "--headless", "--profile", str(profile), *args]
        proc = _locust([*argv, "--results-dir", str(work), "HomeofficeUser"], timeout_s=60)
        elapsed = time.monotonic() - t0
        made = list(work.rglob("meta.json"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gateload: error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert errors[0].endswith(f"has 20: raise farm.accounts in the profile or lower {lower}")
    assert "Traceback" not in proc.stderr
    assert elapsed < 30 and made == []  # no run started
    after = _farm_logins(profile)
    assert after["tickets"] == before["tickets"]  # no load reached the farm
    served = [sum(sum(s["served"].values()) for s in m["servers"].values()) for m in (before, after)]
    assert served[0] == served[1]


def test_the_web_ui_refuses_a_start_with_too_few_accounts(reference_farm: Callable[..., Path]) -> None:
    profile = reference_farm("reference-before", **FAST)  # 20 accounts
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def post(path: str, form: dict[str, str]) -> dict[str, Any]:
        data = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(urllib.request.Request(base + path, data=data), timeout=10) as answer:
            return json.loads(answer.read())

    def up() -> bool:
        try:
            with urllib.request.urlopen(base + "/", timeout=2):
                return True
        except OSError:
            return False

    with private_dir("accounts-web") as work:
        argv = ["-f", "locustfiles/homeoffice.py", "--profile", str(profile), "--web-host", "127.0.0.1"]
        argv += ["--web-port", str(port), "--results-dir", str(work), "--label", "web", "HomeofficeUser"]
        with (work / "web.log").open("wb") as log:
            proc = subprocess.Popen([LOCUST, *argv], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not up() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert up(), (work / "web.log").read_text()[-2000:]
            few = post("/swarm", {"user_count": "21", "spawn_rate": "5", "shape": "none"})
            step = post(
                "/swarm", {"user_count": "1", "spawn_rate": "5", "shape": "step", "step_users": "5,30"}
            )
            # 30 users at 2 per account fit 20 accounts (a gateway allowing 2 sessions per account)
            fits = post("/swarm", {"user_count": "30", "spawn_rate": "30", "users_per_account": "2"})
            post("/stop", {})
        finally:
            proc.terminate()
            proc.wait(30)
    assert few["success"] is False and few["message"].startswith("21 users need 21 accounts; ")
    assert "has 20: raise farm.accounts in the profile or lower -u" in few["message"]
    assert step["success"] is False and step["message"].startswith("30 users need 30 accounts; ")
    assert step["message"].endswith("or lower --step-users")
    assert fits["success"] is True, fits


@pytest.mark.parametrize("profile_name", ["reference-before", "reference-after"])
def test_the_reference_profiles_have_accounts_for_the_demo(profile_name: str) -> None:
    from gateload.campaign import DEMO_SHAPES
    from gateload.locustfiles.lib.schedule import plan_from_args

    farm = load_profile(REPO / "targets" / "profiles" / f"{profile_name}.toml").farm
    assert farm is not None and farm.max_sessions_per_account == 0  # existing profiles: no limit
    for shape in DEMO_SHAPES.values():
        peak = plan_from_args(shape.split()).peak_users
        assert peak == 260
        for processes in (1, 2, 4):
            check_accounts(peak, farm.accounts, processes, profile_name)  # raises if it does not fit
