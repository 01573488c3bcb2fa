"""Every file of the bad-input corpus (tests/badinput/) through every command that reads it.

Each must answer one line on stderr naming the problem and the fix, exit code 2, no traceback, and
lose nothing already recorded: the corpus files and an earlier run folder are left as they were.
The ``gateload`` commands run in process through ``gateload.cli.main`` (the console script's entry
point; an unexpected exception would fail the test with its traceback); ``locust`` runs as the real
command, several at a time.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateload.analysis.synthetic import SynthSpec, write_run
from gateload.cli import main as gateload_main

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "badinput"
EXPECTED = tomllib.loads((CORPUS / "expected.toml").read_text())
COMMANDS = {
    "profiles": ("serve", "campaign", "locust"),
    "acceptance": ("check", "compare", "campaign"),
    "runs": ("check", "compare", "report"),
}
GOOD_PROFILE = ROOT / "targets" / "profiles" / "reference-before.toml"


def cases(section: str) -> list[tuple[str, str, str]]:
    """(file, command, expected fragment) of one corpus section."""
    out = []
    for name, answers in EXPECTED[section].items():
        for command in COMMANDS[section]:
            message = answers.get(command, answers.get("all"))
            if message is not None:
                out.append((name, command, message))
    return out


def test_the_corpus_and_its_index_agree() -> None:
    for section, suffix in (("profiles", ".toml"), ("acceptance", ".toml"), ("runs", "")):
        on_disk = {p.name for p in (CORPUS / section).iterdir() if not suffix or p.suffix == suffix}
        assert on_disk == set(EXPECTED[section]), section


def digest(path: Path) -> str:
    """A hash of a file or of every file under a folder (names and bytes)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def one_line_error(err: str, expected: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("gateload: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def run_gateload(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = gateload_main([str(a) for a in args])
    return rc, capsys.readouterr().err


# --- shared inputs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good acceptance file and a good 'after' run to compare with."""
    folder = tmp_path_factory.mktemp("good")
    acceptance = folder / "acceptance.toml"
    acceptance.write_text("[errors]\nmax_rate = 0.5\n")
    after = write_run(
        SynthSpec(label="after", run_id="a1", steps=((5, 20.0), (10, 20.0)), ramp_s=1.0), folder
    )
    return {"acceptance": acceptance, "after": after}


# --- profiles -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def locust_answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple]]:
    """Every bad profile through the real ``locust`` command, four at a time."""
    folder = tmp_path_factory.mktemp("locust-bad")
    names = [name for name, command, _ in cases("profiles") if command == "locust"]

    def one(name: str) -> tuple[subprocess.CompletedProcess[str], Path, str]:
        results = folder / name
        earlier = results / "before" / "r1"
        earlier.mkdir(parents=True)
        (earlier / "meta.json").write_text('{"status": "completed"}')
        cmd = [sys.executable, "-m", "locust", "-f", "locustfiles/homeoffice.py", "--headless"]
        cmd += ["-u", "1", "-r", "1", "-t", "3s", "--profile", str(CORPUS / "profiles" / name)]
        cmd += ["--results-dir", str(results), "HomeofficeUser"]
        before = digest(results)
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        return out, results, before

    with ThreadPoolExecutor(max_workers=4) as pool:
        yield dict(zip(names, pool.map(one, names), strict=True))


@pytest.mark.parametrize(("name", "command", "expected"), cases("profiles"))
def test_bad_profile(
    name: str,
    command: str,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    locust_answers: dict[str, tuple],
) -> None:
    path = CORPUS / "profiles" / name
    kept = digest(path)
    if command == "locust":
        out, results, before = locust_answers[name]
        assert out.returncode == 2, out.stderr[-2000:]
        errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
        assert len(errors) == 1 and errors[0].startswith("gateload: error: ") and expected in errors[0], (
            errors
        )
        assert "Traceback" not in out.stderr + out.stdout
        assert digest(results) == before, "an earlier run folder was touched"
        assert not [p for p in results.rglob("meta.json") if p.parent.name != "r1"], "no run was started"
    else:
        if command == "serve":
            args = ["serve", "--profile", path, "--free-ports", "--state-dir", tmp_path / "state"]
        else:
            args = ["campaign", "--before", path, "--after", GOOD_PROFILE, "--out", tmp_path / "camp"]
            args += ["-u", "1", "-t", "1s"]
        rc, err = run_gateload(args, capsys)
        assert rc == 2
        one_line_error(err, expected)
        assert not (tmp_path / "camp").exists() or not list((tmp_path / "camp").rglob("meta.json"))
    assert digest(path) == kept


# --- acceptance files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "command", "expected"), cases("acceptance"))
def test_bad_acceptance_file(
    name: str,
    command: str,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    good: dict[str, Path],
) -> None:
    path = CORPUS / "acceptance" / name
    run = CORPUS / "runs" / "interrupted"
    if command == "check":
        args = ["check", run, "--allow-incomplete", "--acceptance", path]
    elif command == "compare":
        args = [
            "compare",
            run,
            good["after"],
            "--allow-incomplete",
            "--acceptance",
            path,
            "--out",
            tmp_path / "r",
        ]
    else:  # the campaign reads it before any load is sent
        args = ["campaign", "--before", GOOD_PROFILE, "--after", GOOD_PROFILE, "--acceptance", path]
        args += ["--out", tmp_path / "camp", "-u", "1", "-t", "1s"]
    rc, err = run_gateload(args, capsys)
    assert rc == 2
    assert str(path) in one_line_error(err, expected)
    assert not (tmp_path / "camp").exists()
    assert not (tmp_path / "r").exists(), "no report from a bad acceptance file"


# --- run folders --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "command", "expected"), cases("runs"))
def test_bad_run_folder(
    name: str,
    command: str,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    good: dict[str, Path],
) -> None:
    run = CORPUS / "runs" / name
    kept = digest(run)
    boot = ["--bootstrap", "100"]
    if command == "check":
        args = ["check", run, "--acceptance", good["acceptance"], *boot]
    elif command == "compare":
        args = [
            "compare",
            run,
            good["after"],
            "--acceptance",
            good["acceptance"],
            "--out",
            tmp_path / "r",
            *boot,
        ]
    else:
        args = ["report", run, "--out", tmp_path / "r", *boot]
    rc, err = run_gateload(args, capsys)
    assert rc == 2
    one_line_error(err, expected)
    assert digest(run) == kept, "the analysis must never change what was recorded"
    assert not (tmp_path / "r").exists()
