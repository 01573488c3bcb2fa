"""Command-line and report conventions: --version, exit codes in every command's help, a report
without a verdict, JUnit XML structure, error-rate intervals within [0, 1]."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from analysis_fixtures import SMALL, write_toml

from analysis.synthetic import write_run
from gateload import cli
from gateload.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
BOOT = ["--bootstrap", "100"]
CODE_LINE = re.compile(r"^ {2}(\d+) {2,}\S")


def pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# --------------------------------------------------------------------------------------- --version


def test_version_prints_name_and_version_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateload.cli", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"gateload {cli.version()}\n"
    assert cli.version() == importlib.metadata.version("gateload")


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert cli.version() == pyproject_version()


# ------------------------------------------------------------------------------------ exit codes


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every registered subcommand's parser, nested ones (fault inject) as 'fault inject'."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found |= {f"{name} {k}": v for k, v in subcommands(sub).items()}
    return found


def help_codes(text: str) -> dict[int, str]:
    """The codes listed under the help's closing 'exit codes:' section (code -> its line)."""
    _head, sep, tail = text.rpartition("\nexit codes:\n")
    assert sep, "no 'exit codes:' section"
    lines = tail.rstrip("\n").splitlines()
    codes = {int(m.group(1)): ln for ln in lines if (m := CODE_LINE.match(ln))}
    # the section closes the help: nothing but its own lines (or their continuations) follows
    assert all(CODE_LINE.match(ln) or ln.startswith(" " * 7) for ln in lines), lines
    return codes


def test_every_subcommand_help_ends_with_its_exit_codes() -> None:
    parsers = subcommands(build_parser())
    expected = {"serve", "fault", "usl", "compare", "check", "report", "campaign", "demo", "probe", "pin"}
    assert expected <= set(parsers), sorted(parsers)
    for name, parser in parsers.items():
        codes = help_codes(parser.format_help())
        assert 0 in codes and 2 in codes, (name, codes)
        assert "bad input" in codes[2], (name, codes[2])
        # lines stay lines: one code per line, however narrow the terminal is not wrapped into prose
        assert all(len(line) <= 110 for line in codes.values()), name
    for name in ("compare", "check", "campaign", "demo"):
        codes = help_codes(parsers[name].format_help())
        assert set(codes) == {0, 1, 2, 3, 130}, (name, codes)
        assert "PASS" in codes[0] and "FAIL" in codes[1] and "INCONCLUSIVE" in codes[3], name
    assert set(help_codes(parsers["probe"].format_help())) == {0, 1, 2, 130}
    assert 1 not in help_codes(parsers["report"].format_help())  # a report never fails a build


def test_a_helpless_parser_would_be_caught() -> None:
    bare = argparse.ArgumentParser(prog="x")
    with pytest.raises(AssertionError):
        help_codes(bare.format_help())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic run: three steps, 30 users at the middle one."""
    return write_run(SMALL.with_(run_id="conv"), tmp_path_factory.mktemp("runs"))


def test_check_returns_the_codes_its_help_names(
    tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    named = help_codes(subcommands(build_parser())["check"].format_help())
    ref = "[load]\nreference_users = 30\n"
    cases = {
        0: write_toml(tmp_path / "loose.toml", ref + '[sla]\n"SSH exec" = 60000\n'),
        1: write_toml(tmp_path / "tight.toml", ref + '[sla]\n"SSH exec" = 0.001\n'),
        3: write_toml(tmp_path / "empty.toml", ref),  # no criteria: nothing to pass
    }
    for code, acc in cases.items():
        rc = main(["check", str(run_dir), "--acceptance", str(acc), *BOOT])
        out = capsys.readouterr().out
        assert rc == code and code in named, (code, out)
        assert out.startswith(f"check: {named[code].split()[1]}"), out  # the word the help gives it
    rc = main(["check", str(tmp_path / "no-such-run"), "--acceptance", str(cases[0]), *BOOT])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and 2 in named and "\n" not in err and err.startswith("gateload: error: "), err


# ----------------------------------------------------------------------------- error-rate intervals


def test_a_tiny_error_rate_interval_stays_within_0_and_1() -> None:
    """A rare failure makes most bootstrap replicates 0: the linear-scale t interval reached below 0."""
    import numpy as np

    from analysis.metrics import _ratio
    from analysis.stats import block_weights

    rng = np.random.default_rng(7)
    n_blocks = 40
    den = np.full(n_blocks, 50.0)
    num = np.zeros(n_blocks)
    num[3] = 1.0  # one failure in 2,000 operations
    weights = block_weights(n_blocks, 2, 500, rng)
    est = _ratio(num, den, weights, 0.95, (n_blocks - 1.0, 1.5))
    assert est.value == pytest.approx(1 / 2000)
    assert est.has_ci and 0.0 == est.lo < est.value < est.hi <= 1.0, est
    # the other end: nearly everything fails, the interval must not pass 1
    est = _ratio(den - num, den, weights, 0.95, (n_blocks - 1.0, 1.5))
    assert est.value == pytest.approx(1 - 1 / 2000)
    assert est.has_ci and 0.0 <= est.lo < est.value < est.hi == 1.0, est


def test_run_error_rates_in_the_report_stay_within_0_and_1(tmp_path: Path) -> None:
    """End to end: a run with a rare error rate, and 3 replicates (between-run t interval) of it."""
    from analysis.compare import check_runs

    base = SMALL.with_(error_rate=0.0004)
    runs = [write_run(base.with_(run_id=f"r{k}", seed=k), tmp_path) for k in range(3)]
    acc = write_toml(tmp_path / "acc.toml", "[load]\nreference_users = 30\n[errors]\nmax_rate = 0.01\n")
    for side in ([runs[0]], runs):
        v = check_runs(side, acc, n_boot=200, seed=1)
        rates = [v.metrics["error_rate"]["run"]]
        rates += [s["error_rate"] for r in v.metrics["steps"]["run"] for s in r["steps"]]
        rates += [d["error_rate"] for d in [v.metrics["operations"].get("ALL", {}).get("after")] if d]
        intervals = [
            (e["ci_low"], e["ci_high"]) for e in rates if isinstance(e, dict) and e["ci_low"] is not None
        ]
        assert intervals, rates
        assert all(0.0 <= lo <= hi <= 1.0 for lo, hi in intervals), intervals
        (crit,) = [c for c in v.criteria if c.name == "error_rate"]
        assert 0.0 <= crit.ci_low <= crit.estimate <= crit.ci_high <= 1.0, crit
