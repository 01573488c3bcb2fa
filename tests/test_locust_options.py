"""gateload's Locust options act like Locust's own: in the help, in the environment, in a config file.

Every parse runs in a subprocess that imports the locustfile (which registers gateload's
``init_command_line_parser`` listener, as ``locust -f`` does) and then parses with Locust's own
``get_parser().parse_args()``, in an empty working folder and home so no stray ``locust.conf`` is read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateload.locustfiles.lib import options
from gateload.locustfiles.lib.schedule import parse_timespan

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "homeoffice.py"
FLAGS = [flag for flag, _kwargs in options._ARGUMENTS]
DESTS = [flag[2:].replace("-", "_") for flag in FLAGS]

KEYS = [*DESTS, "num_users", "run_time"]
PARSE = f"""
import json, sys
import gateload.locustfiles.homeoffice  # registers gateload's options, as loading the locustfile does
from locust.argument_parser import get_parser
from gateload.locustfiles.lib.options import plain_parser
parsed = get_parser().parse_args(sys.argv[1:])
plain, _unknown = plain_parser().parse_known_args(sys.argv[1:])  # the campaign's pre-flight reading
print(json.dumps({{
    "locust": {{k: getattr(parsed, k) for k in {KEYS!r}}},
    "plain": {{k: getattr(plain, k) for k in {KEYS!r}}},
}}))
"""


def clean_env(home: Path, **env: str) -> dict[str, str]:
    """The test's environment without any LOCUST_* variable of the caller, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    return base | {"HOME": str(home), "PYTHONPATH": str(ROOT)} | env


def parse(tmp_path: Path, *argv: str, **env: str) -> dict[str, Any]:
    """gateload's option values for a command line, environment and config, as Locust parses them.

    The campaign's pre-flight parser (``plain_parser``) must read the same values, or a campaign would
    check one plan and run another.
    """
    done = subprocess.run(
        [sys.executable, "-c", PARSE, *argv],
        cwd=tmp_path,
        env=clean_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    # Locust turns -t into seconds when it parses; the pre-flight keeps the text for build_plan
    if got["plain"]["run_time"] is not None:
        got["plain"]["run_time"] = parse_timespan(got["plain"]["run_time"])
    assert got["plain"] == got["locust"]
    return got["locust"]


def subset(got: dict[str, Any], expected: dict[str, Any]) -> bool:
    """True if ``got`` holds every key of ``expected`` with its value (pytest shows both on failure)."""
    return {k: got.get(k) for k in expected} == expected


def test_env_var_names_mirror_locusts_own() -> None:
    assert options.env_var("--step-users") == "LOCUST_STEP_USERS"
    assert options.env_var("--shape") == "LOCUST_SHAPE"
    # Locust's --spawn-rate is LOCUST_SPAWN_RATE: the same rule
    assert options.env_var("--spawn-rate") == "LOCUST_SPAWN_RATE"


def test_help_lists_every_gateload_option_in_its_group() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateload.locustfiles.lib.options"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--headless" in done.stdout  # Locust's own help, not a separate one
    group = done.stdout.split(f"\n{options.GROUP}:\n", 1)
    assert len(group) == 2, f"no '{options.GROUP}' group in the help"
    listed = group[1].split("\n\n", 1)[0]
    missing = [flag for flag in FLAGS if flag not in listed]
    assert not missing, f"not in the '{options.GROUP}' group: {missing}"


def test_locust_help_is_printed_before_the_locustfile_loads() -> None:
    """Why ``python -m gateload.locustfiles.lib.options`` exists: if this starts failing, Locust lists
    locustfile options in ``locust -f ... --help`` (locust#2917), and the notes in options.py, homeoffice.py
    and the README can say so instead."""
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--headless" in done.stdout
    assert "--step-users" not in done.stdout


def test_defaults_without_environment_or_config(tmp_path: Path) -> None:
    got = parse(tmp_path)
    assert got["shape"] == "none" and got["step_hold"] == 30.0 and got["allow_remote"] is False


def test_environment_sets_gateload_options(tmp_path: Path) -> None:
    got = parse(
        tmp_path,
        LOCUST_SHAPE="step",
        LOCUST_STEP_USERS="10,20,40",
        LOCUST_STEP_HOLD="12.5",
        LOCUST_USERS_PER_ACCOUNT="3",
        LOCUST_LABEL="after",
        LOCUST_ALLOW_REMOTE="true",
        LOCUST_USERS="7",  # Locust's own, for comparison
        LOCUST_RUN_TIME="2m",
    )
    assert subset(
        got,
        {
            "shape": "step",
            "step_users": "10,20,40",
            "step_hold": 12.5,
            "users_per_account": 3,
            "label": "after",
            "allow_remote": True,
            "num_users": 7,
            "run_time": 120,
        },
    )


def test_config_file_sets_gateload_options(tmp_path: Path) -> None:
    conf = tmp_path / "gateload.conf"
    conf.write_text(
        "shape = workday\nworkday-minutes = 4.5\nresults-dir = results/conf\n"
        "run-id = r1\nallow-remote = true\nusers = 9\nrun-time = 90s\nheadless = true\n"
    )
    got = parse(tmp_path, "--config", str(conf))
    assert subset(
        got,
        {
            "shape": "workday",
            "workday_minutes": 4.5,
            "results_dir": "results/conf",
            "run_id": "r1",
            "allow_remote": True,
            "num_users": 9,
            "run_time": 90,
        },
    )


def test_locust_conf_and_pyproject_in_the_working_folder_are_read(tmp_path: Path) -> None:
    (tmp_path / "locust.conf").write_text("shape = arrivals\narrival-rate = 2.5\n")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.other]\nlabel = "not-ours"\n[tool.locust]\nstep-count = 3\n'
    )
    got = parse(tmp_path)
    assert (got["shape"], got["arrival_rate"], got["step_count"], got["label"]) == ("arrivals", 2.5, 3, "run")


def test_command_line_beats_environment_beats_config(tmp_path: Path) -> None:
    conf = tmp_path / "gateload.conf"
    conf.write_text("step-users = 1,2\nlabel = from-conf\nstep-add = 5\n")
    env = {"LOCUST_STEP_USERS": "3,4", "LOCUST_LABEL": "from-env"}
    got = parse(tmp_path, "--config", str(conf), "--step-users", "5,6", **env)
    # each option from its highest source: command line, else environment, else file
    assert (got["step_users"], got["label"], got["step_add"]) == ("5,6", "from-env", 5)
    got = parse(tmp_path, "--config", str(conf), **env)
    assert (got["step_users"], got["label"]) == ("3,4", "from-env")


@pytest.mark.parametrize(
    ("env", "named"),
    [({"LOCUST_SHAPE": "zigzag"}, "--shape"), ({"LOCUST_STEP_HOLD": "long"}, "--step-hold")],
)
def test_bad_environment_value_is_a_usage_error_naming_the_option(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PARSE],
        cwd=tmp_path,
        env=clean_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "error:" in last and named in last and "Traceback" not in done.stderr
