"""`gateload compare | check | report`: exit codes, reports, verdict.json, one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from analysis_fixtures import SMALL, before_after, write_toml

from gateload.analysis.compare import compare_runs
from gateload.analysis.schema import META_FILE, SAMPLES_DIR, part_files
from gateload.analysis.synthetic import write_run
from gateload.cli import main

BOOT = ["--bootstrap", "200"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A before (4 servers) and after (12 servers) run: throughput x2, latency x0.7."""
    return before_after(tmp_path_factory.mktemp("runs"), gain=2.0, latency=0.7)


@pytest.fixture(scope="module")
def gain(pair: tuple[Path, Path]) -> float:
    """The peak-throughput gain estimate the CLI will see (same data, same seed)."""
    v = compare_runs(pair[0], pair[1], None, n_boot=200)
    return v.metrics["peak_throughput"]["ratio"]


def acceptance(tmp_path: Path, min_gain: float) -> Path:
    return write_toml(
        tmp_path / "acc.toml",
        f"""
version = 1
[load]
reference_users = 30
[throughput]
min_peak_gain = {min_gain}
[errors]
max_rate = 0.05
[servers]
min_share_of_even = 0.3
""",
    )


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("gateload: error: "), err
    return err


@pytest.mark.parametrize(
    ("margin", "code", "verdict"), [(1.3, 0, "PASS"), (4.0, 1, "FAIL"), (None, 3, "INCONCLUSIVE")]
)
def test_compare_exit_codes(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pair: tuple[Path, Path],
    gain: float,
    margin: float | None,
    code: int,
    verdict: str,
) -> None:
    acc = acceptance(
        tmp_path, gain if margin is None else margin
    )  # a margin at the estimate cannot be settled
    out = tmp_path / "report"
    rc = main(["compare", str(pair[0]), str(pair[1]), "--acceptance", str(acc), "--out", str(out), *BOOT])
    printed = capsys.readouterr().out
    assert rc == code, printed
    assert printed.startswith(f"compare: {verdict}")
    assert json.loads((out / "verdict.json").read_text())["verdict"] == verdict


def test_verdict_json_and_report_files(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    out = tmp_path / "report"
    # label folders (replicate groups) work as well as run folders
    rc = main(
        [
            "compare",
            str(pair[0].parent),
            str(pair[1].parent),
            "--acceptance",
            str(acceptance(tmp_path, 1.3)),
            "--out",
            str(out),
            *BOOT,
        ]
    )
    assert rc == 0
    v = json.loads((out / "verdict.json").read_text())
    assert v["verdict"] == "PASS"
    assert {c["name"] for c in v["criteria"]} == {"peak_throughput_gain", "error_rate", "new_server_share"}
    for c in v["criteria"]:
        assert set(c) >= {"name", "estimate", "ci_low", "ci_high", "margin", "verdict"}
        assert c["ci_low"] <= c["estimate"] <= c["ci_high"]
    pt = v["metrics"]["peak_throughput"]
    assert set(pt) >= {"before", "after", "ratio", "ci"}
    assert pt["ratio"] == pytest.approx(pt["after"] / pt["before"])
    assert len(pt["ci"]) == 2 and pt["ci"][0] < pt["ratio"] < pt["ci"][1]
    assert v["metrics"]["usl"]["after"]["lambda"] > 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "PASS" in html
    assert "http://" not in html and "https://" not in html  # self-contained
    assert "**PASS**" in (out / "summary.md").read_text()
    root = ET.parse(out / "junit.xml").getroot()
    suite = root.find("testsuite")
    assert root.tag == "testsuites" and suite is not None
    assert len(suite.findall("testcase")) == 3 and suite.get("failures") == "0"


def test_before_after_chosen_by_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pair: tuple[Path, Path]
) -> None:
    acc = acceptance(tmp_path, 1.3)

    def compare(*args: str) -> int:
        return main(["compare", *args, "--acceptance", str(acc), "--out", str(tmp_path / "r"), *BOOT])

    # the label "before" is the baseline whatever the order; a results folder holds both label folders
    assert compare(str(pair[1]), str(pair[0])) == 0
    assert compare(str(pair[0].parent.parent)) == 0
    # --before chooses otherwise: the gain is inverted and fails
    assert compare(str(pair[0]), str(pair[1]), "--before", "after") == 1
    capsys.readouterr()


def test_check_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pair: tuple[Path, Path]
) -> None:
    loose = write_toml(tmp_path / "loose.toml", '[load]\nreference_users = 30\n[sla]\n"SSH exec" = 5000\n')
    tight = write_toml(tmp_path / "tight.toml", '[load]\nreference_users = 30\n[sla]\n"SSH exec" = 1\n')
    assert main(["check", str(pair[1]), "--acceptance", str(loose), *BOOT]) == 0
    assert main(["check", str(pair[1]), "--acceptance", str(tight), *BOOT]) == 1
    assert capsys.readouterr().out.count("FAIL") >= 2


def test_report_command(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    assert main(["report", str(pair[0]), "--out", str(tmp_path / "rep"), *BOOT]) == 0
    assert (tmp_path / "rep" / "report.html").stat().st_size > 10_000


# ------------------------------------------------------------------------------------------- bad input


def _copy(pair: tuple[Path, Path], tmp: Path) -> Path:
    dst = tmp / "before" / "b1"
    shutil.copytree(pair[0], dst)
    return dst


def corrupt_part(run: Path) -> None:
    part_files(run)[0].write_bytes(b"PAR1 this is not parquet")


def missing_meta(run: Path) -> None:
    (run / META_FILE).unlink()


def broken_meta(run: Path) -> None:
    (run / META_FILE).write_text('{"run_id": "b1", "status": ')


def missing_part(run: Path) -> None:
    part_files(run)[0].unlink()


def empty_run(run: Path) -> None:
    for p in part_files(run):
        p.unlink()


def no_samples_dir(run: Path) -> None:
    shutil.rmtree(run / SAMPLES_DIR)


def interrupted(run: Path) -> None:
    meta = json.loads((run / META_FILE).read_text())
    meta["status"] = "interrupted"
    (run / META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (corrupt_part, "corrupt Parquet part"),
        (missing_meta, "meta.json missing"),
        (broken_meta, "not valid JSON"),
        (missing_part, "partial run"),
        (empty_run, "holds no part files"),
        (no_samples_dir, "samples.parquet/ missing"),
        (interrupted, "incomplete"),
    ],
)
def test_damaged_run_is_one_line_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pair: tuple[Path, Path],
    damage: Callable[[Path], None],
    message: str,
) -> None:
    run = _copy(pair, tmp_path)
    damage(run)
    rc = main(
        [
            "compare",
            str(run),
            str(pair[1]),
            "--acceptance",
            str(acceptance(tmp_path, 1.3)),
            "--out",
            str(tmp_path / "r"),
            *BOOT,
        ]
    )
    assert rc == 2
    assert message in one_line_error(capsys)


def test_a_run_with_no_steady_state_is_inconclusive_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pair: tuple[Path, Path]
) -> None:
    # Latency keeps climbing: its intervals bound no steady value, so neither the SLA it clearly misses
    # nor the error rate it clearly meets is a verdict. CI still gets a report and a JUnit file.
    run = write_run(SMALL.with_(label="after", steps=((10, 60.0),), trend_per_s=0.05), tmp_path / "trending")
    acc = write_toml(
        tmp_path / "a.toml", '[load]\nreference_users = 10\n[sla]\n"SSH exec" = 1\n[errors]\nmax_rate = 0.1\n'
    )
    out = tmp_path / "report"
    assert main(["check", str(run), "--acceptance", str(acc), "--out", str(out), *BOOT]) == 3
    printed = capsys.readouterr().out
    assert printed.startswith("check: INCONCLUSIVE") and "never reached a steady state" in printed
    verdict = json.loads((out / "verdict.json").read_text())
    notes = {c["name"]: c["note"] for c in verdict["criteria"]}
    assert {c["verdict"] for c in verdict["criteria"]} == {"INCONCLUSIVE"}
    assert any(n.startswith("FAIL on figures with no steady state") for n in notes.values()), notes
    assert any(n.startswith("PASS on figures with no steady state") for n in notes.values()), notes
    assert [r["steady"] for r in verdict["runs"]["run"]] == [False]
    cases = ET.parse(out / "junit.xml").getroot().iter("testcase")
    assert all(case.find("skipped") is not None for case in cases)
    assert "NO STEADY STATE" in (out / "summary.md").read_text()
    # a compare whose after side never settles is no verdict either
    acc = acceptance(tmp_path, 1.3)
    rc = main(["compare", str(pair[0]), str(run), "--acceptance", str(acc), "--out", str(out), *BOOT])
    assert rc == 3
    assert "never reached a steady state" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[throughput\nmin_peak_gain = 2", "not valid TOML"),
        ("[throughput]\nmin_peak_gian = 2.0\n", "did you mean 'min_peak_gain'"),
        ('[throughput]\nmin_peak_gain = "2x"\n', "'throughput.min_peak_gain' must be a number"),
        ("[errors]\nmax_rate = 5\n", "between 0 and 1"),
        ("[logon]\nmax_p95_ms = 1500\n", "'load.reference_users' is missing"),
        ("[sla]\nkeystroke = 100\n", "is not an operation"),
        ("version = 2\n", "must be 1"),
        ("colour = 1\n", "unknown key 'colour'"),
    ],
)
def test_bad_acceptance_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pair: tuple[Path, Path], text: str, message: str
) -> None:
    acc = write_toml(tmp_path / "bad.toml", text)
    assert main(["check", str(pair[1]), "--acceptance", str(acc)]) == 2
    err = one_line_error(capsys)
    assert message in err and str(acc) in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "{nowhere}", "--acceptance", "{acc}"], "no such folder"),
        (["check", "{pair0}", "--acceptance", "{tmp}/missing.toml"], "acceptance file not found"),
        (["compare", "{pair0}", "--acceptance", "{acc}", "--out", "{tmp}/r"], "exactly two labels"),
        (
            [
                "compare",
                "{pair0}",
                "{pair1}",
                "--before",
                "nope",
                "--acceptance",
                "{acc}",
                "--out",
                "{tmp}/r",
            ],
            "no run has that label",
        ),
        (["check", "{tmp}", "--acceptance", "{acc}"], "holds no run folders"),
        (["check", "{pair0}", "{pair1}", "--acceptance", "{acc}"], "one configuration"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pair: tuple[Path, Path], args: list[str], message: str
) -> None:
    acc = acceptance(tmp_path, 1.3)
    values = {
        "nowhere": tmp_path / "nowhere",
        "acc": acc,
        "tmp": tmp_path,
        "pair0": pair[0],
        "pair1": pair[1],
    }
    assert main([a.format(**values) for a in args]) == 2
    assert message in one_line_error(capsys)
