"""Universal Scalability Law: published reference values, parameter recovery, the `gateload usl` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gateload.analysis import capacity
from gateload.analysis.metrics import analyze_run
from gateload.analysis.synthetic import SynthSpec, build_run, truth_throughput
from gateload.analysis.usl import fit_usl, usl_x
from gateload.cli import main

DATA = Path(__file__).parent / "data" / "specsdm91.csv"

# R package usl 2.0, usl(throughput ~ load, specsdm91, method = "nlxb"): tests/usl-nlxb.Rout.save
PUBLISHED = {"lambda": 89.9952330, "sigma": 0.0277285, "kappa": 0.0001044}
PUBLISHED_SE = {"lambda": 14.2134894, "sigma": 0.0091217, "kappa": 0.0000199}


def run_usl(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["usl", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_specsdm91_reproduces_published_fit(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_usl(capsys, str(DATA))
    for key, value in PUBLISHED.items():
        assert out[key] == pytest.approx(value, rel=1e-3), key
    # N* and x_max follow from the published coefficients
    n_star = math.sqrt((1 - PUBLISHED["sigma"]) / PUBLISHED["kappa"])
    assert out["n_star"] == pytest.approx(n_star, rel=1e-3)
    assert round(out["n_star"]) == 97  # peak.scalability(), 2 significant digits in the R tests
    x_max = float(usl_x(n_star, PUBLISHED["lambda"], PUBLISHED["sigma"], PUBLISHED["kappa"]))
    assert out["x_max"] == pytest.approx(x_max, rel=1e-3)
    assert out["r_squared"] == pytest.approx(0.9896, abs=1e-4)


def test_specsdm91_standard_errors_match_r() -> None:
    n, x = np.loadtxt(DATA, delimiter=",", comments="#", skiprows=6, unpack=True)
    fit = fit_usl(n, x)
    for key, value in PUBLISHED_SE.items():
        assert fit.std_error[key] == pytest.approx(value, rel=1e-2), key


def test_columns_by_name_and_position(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n, x = np.loadtxt(DATA, delimiter=",", comments="#", skiprows=6, unpack=True)
    csv = tmp_path / "wide.csv"
    rows = ["tput,other,users"] + [f"{xi},{i},{int(ni)}" for i, (ni, xi) in enumerate(zip(n, x, strict=True))]
    csv.write_text("\n".join(rows) + "\n")
    by_name = run_usl(capsys, str(csv), "--n-col", "users", "--x-col", "tput")
    by_pos = run_usl(capsys, str(csv), "--n-col", "3", "--x-col", "1")
    assert by_name["lambda"] == pytest.approx(PUBLISHED["lambda"], rel=1e-3)
    assert by_pos == by_name


def test_headerless_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "plain.csv"
    csv.write_text("".join(f"{n},{usl_x(n, 10.0, 0.05, 0.002):.6f}\n" for n in (1, 2, 4, 8, 16, 32, 64)))
    out = run_usl(capsys, str(csv))
    assert (out["lambda"], out["sigma"], out["kappa"]) == pytest.approx((10.0, 0.05, 0.002), rel=1e-3)


def test_fit_recovers_known_parameters_from_noisy_points() -> None:
    rng = np.random.default_rng(7)
    truth = (50.0, 0.04, 0.0008)
    n = np.array([1, 2, 4, 8, 12, 16, 24, 32, 48, 64], dtype=float)
    x = usl_x(n, *truth) * np.exp(rng.normal(0, 0.01, len(n)))
    fit = fit_usl(n, x)
    assert fit.lam == pytest.approx(truth[0], rel=0.05)
    assert fit.sigma == pytest.approx(truth[1], rel=0.25)
    assert fit.kappa == pytest.approx(truth[2], rel=0.15)
    n_star = math.sqrt((1 - truth[1]) / truth[2])
    assert fit.n_star == pytest.approx(n_star, rel=0.1)


def test_step_run_usl_intervals_cover_truth() -> None:
    """Step runs whose throughput follows a known USL: the bootstrap intervals cover the truth about as
    often as they claim. One seed checks nothing (a 95% interval misses 1 run in 20): 12 fixed seeds
    take 1.5 s; 8 to 10 of 12 covered n* when measured, whether the runs' last 1.6 s were cut or not."""
    covered = {"n_star": 0, "x_max": 0}
    n_star = math.sqrt((1 - 0.03) / 0.002)
    for seed in range(1, 13):
        spec = SynthSpec(
            steps=tuple((n, 20.0) for n in (2, 5, 10, 20, 35, 50, 70)),
            ramp_s=1.0,
            usl=(20.0, 0.03, 0.002),
            paced_rate=0.0,
            session_s=1e9,
            error_rate=0.0,
            seed=seed,
        )
        fit, why = capacity.fit_runs([analyze_run(build_run(spec))])
        assert fit is not None, why
        truth = {"n_star": n_star, "x_max": truth_throughput(spec, n_star)}
        for name, value in truth.items():
            covered[name] += fit.ci[name][0] <= value <= fit.ci[name][1]
        assert fit.lam == pytest.approx(20.0, rel=0.15)
    # at a true 95% coverage fewer than 8 of 12 happens 2 times in 10,000: then the intervals are too narrow
    assert covered["n_star"] >= 8 and covered["x_max"] >= 8, covered


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, [], "no such CSV file"),
        ("n,x\n1,10\n2,19\n", [], "3 or more distinct"),
        ("n,x\n1,10\n2,abc\n4,30\n8,40\n", [], "row 3"),
        ("n,x\n1,10\n2,19\n4,30\n", ["--n-col", "users"], "no column 'users'"),
        ("n,x\n0,10\n2,19\n4,30\n", [], "concurrency must be > 0"),
    ],
)
def test_bad_csv_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, args: list[str], message: str
) -> None:
    csv = tmp_path / "in.csv"
    if content is not None:
        csv.write_text(content)
    assert main(["usl", str(csv), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gateload: error:")
    assert message in err and "Traceback" not in err
