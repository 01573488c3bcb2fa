"""Command-line and report conventions: --version, exit codes in every command's help, a report
without a verdict, JUnit XML structure, error-rate intervals within [0, 1]."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from analysis_fixtures import SMALL, write_toml

from gateload import cli
from gateload.analysis.synthetic import write_run
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

    from gateload.analysis.metrics import _ratio
    from gateload.analysis.stats import block_weights

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
    from gateload.analysis.compare import check_runs

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


# ------------------------------------------------------------------------------ report: no verdict

VERDICT_WORDS = re.compile(r"\b(PASS|FAIL|INCONCLUSIVE)\b")


def test_report_claims_no_verdict(tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    assert main(["report", str(run_dir), "--out", str(out), *BOOT]) == 0
    # with an acceptance file too: its SLAs place the knees, they are not judged
    acc = write_toml(tmp_path / "tight.toml", '[load]\nreference_users = 30\n[sla]\n"SSH exec" = 0.001\n')
    out_acc = tmp_path / "rep-acc"
    assert main(["report", str(run_dir), "--out", str(out_acc), "--acceptance", str(acc), *BOOT]) == 0
    printed = capsys.readouterr().out
    assert not VERDICT_WORDS.search(printed), printed
    for folder in (out, out_acc):
        v = json.loads((folder / "verdict.json").read_text())
        assert v["verdict"] == "none" and v["kind"] == "report" and v["criteria"] == []
        assert v["metrics"]["peak_throughput"]["run"] > 0  # the report itself is all there
        summary = (folder / "summary.md").read_text()
        assert summary.startswith("# gateload report: **no verdict**") and not VERDICT_WORDS.search(summary)
        page = (folder / "report.html").read_text()
        body = re.sub(r"<style>.*?</style>", "", page, flags=re.S)  # CSS names the verdict classes
        assert "no verdict" in body and not VERDICT_WORDS.search(body)
        suite = ET.parse(folder / "junit.xml").getroot().find("testsuite")
        assert suite is not None and suite.get("tests") == "0" and not suite.findall("testcase")
        assert {p.get("name"): p.get("value") for p in suite.iter("property")}["verdict"] == "none"
    knees = json.loads((out_acc / "verdict.json").read_text())["metrics"]["knees"]["run"]
    assert [k["op"] for k in knees] == ["SSH exec"] and knees[0]["users"] == 10  # the SLA was used
    # the same acceptance file through check does judge (and fails): the gate is check, not report
    assert main(["check", str(run_dir), "--acceptance", str(acc), *BOOT]) == 1
    capsys.readouterr()


# ----------------------------------------------------------------------------------------- JUnit

ISO_LOCAL = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")  # xs:dateTime without a zone
DECIMAL = re.compile(r"^\d+(\.\d+)?$")
CASE_ORDER = ("skipped", "error", "failure", "system-out", "system-err")


def junit_problems(root: ET.Element) -> list[str]:
    """Where a JUnit document departs from the common schema (testsuites > testsuite > properties,
    testcase..., system-out?, system-err?), as readable lines; [] when it conforms."""
    bad: list[str] = []
    if root.tag != "testsuites":
        return [f"root is <{root.tag}>, not <testsuites>"]
    suites = list(root)
    if not suites or any(s.tag != "testsuite" for s in suites):
        bad.append("<testsuites> must hold only <testsuite> elements")
    for s in suites:
        for attr in ("name", "tests", "failures", "errors", "skipped", "time", "timestamp", "hostname"):
            if s.get(attr) in (None, ""):
                bad.append(f"testsuite lacks {attr}")
        for attr in ("tests", "failures", "errors", "skipped"):
            if not (s.get(attr) or "").isdigit():
                bad.append(f"testsuite {attr}={s.get(attr)!r} is not a count")
        if not DECIMAL.match(s.get("time") or ""):
            bad.append(f"testsuite time={s.get('time')!r} is not a decimal")
        if not ISO_LOCAL.match(s.get("timestamp") or ""):
            bad.append(f"testsuite timestamp={s.get('timestamp')!r} is not ISO 8601 without a zone")
        tags = [c.tag for c in s]
        if tags[:1] != ["properties"]:
            bad.append(f"testsuite's first child is {tags[:1]}, not properties")
        rest = tags[1:]
        n_cases = rest.count("testcase")
        if rest[:n_cases] != ["testcase"] * n_cases or any(
            t not in ("system-out", "system-err") for t in rest[n_cases:]
        ):
            bad.append(f"testsuite children out of order: {tags}")
        if any(p.tag != "property" or p.get("name") is None or p.get("value") is None for p in s[0]):
            bad.append("properties must hold <property name value> only")
        cases = s.findall("testcase")
        for c in cases:
            for attr in ("classname", "name", "time"):
                if c.get(attr) in (None, ""):
                    bad.append(f"testcase {c.get('name')} lacks {attr}")
            if not DECIMAL.match(c.get("time") or ""):
                bad.append(f"testcase {c.get('name')} time={c.get('time')!r} is not a decimal")
            order = [CASE_ORDER.index(e.tag) if e.tag in CASE_ORDER else -1 for e in c]
            if -1 in order or order != sorted(order) or [e.tag for e in c].count("skipped") > 1:
                bad.append(
                    f"testcase {c.get('name')} children {[e.tag for e in c]} not in the schema's order"
                )
        counted = {
            "tests": len(cases),
            "failures": sum(c.find("failure") is not None for c in cases),
            "errors": sum(c.find("error") is not None for c in cases),
            "skipped": sum(c.find("skipped") is not None for c in cases),
        }
        bad += [f"testsuite {k}={s.get(k)} but {n} found" for k, n in counted.items() if s.get(k) != str(n)]
    for attr in ("tests", "failures", "errors", "skipped"):
        total = sum(int(s.get(attr) or 0) for s in suites if (s.get(attr) or "").isdigit())
        if root.get(attr) is not None and root.get(attr) != str(total):
            bad.append(f"testsuites {attr}={root.get(attr)} but the suites sum to {total}")
    return bad


def test_junit_follows_the_common_schema(
    tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = "[load]\nreference_users = 30\n[errors]\nmax_rate = 0.5\n"
    acc = write_toml(
        tmp_path / "mixed.toml",  # one PASS (errors), one FAIL (exec), one INCONCLUSIVE (no such op)
        ref + '[sla]\n"SSH exec" = 0.001\n"SSH nothing" = 100\n',
    )
    out = tmp_path / "rep"
    assert main(["check", str(run_dir), "--acceptance", str(acc), "--out", str(out), *BOOT]) == 1
    capsys.readouterr()
    root = ET.parse(out / "junit.xml").getroot()
    assert junit_problems(root) == []
    (suite,) = root
    verdicts = {c.get("name"): [e.tag for e in c] for c in suite.findall("testcase")}
    assert verdicts == {
        "sla_p95[SSH exec]": ["failure", "system-out"],
        "sla_p95[SSH nothing]": ["skipped", "system-out"],
        "error_rate": ["system-out"],
    }, verdicts
    assert float(suite.get("time")) > 0  # the analysis took measurable time
    assert {p.get("name"): p.get("value") for p in suite.iter("property")}["verdict"] == "FAIL"


def test_the_junit_checks_can_fail() -> None:
    flat = ET.fromstring('<testsuite name="x" tests="1"><testcase name="a"/></testsuite>')
    assert junit_problems(flat) == ["root is <testsuite>, not <testsuites>"]
    late = ET.fromstring(
        '<testsuites><testsuite name="x" tests="1" failures="0" errors="0" skipped="0" time="1.5s" '
        'timestamp="2026-01-01T00:00:00+00:00" hostname="h"><testcase classname="c" name="a" time="0"/>'
        "<properties/></testsuite></testsuites>"
    )
    problems = " | ".join(junit_problems(late))
    assert "first child" in problems and "time='1.5s'" in problems and "without a zone" in problems, problems
