"""Run.to_pandas: the notebook view of a run agrees row for row with what the numpy analysis uses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import SMALL

from gateload.analysis.metrics import analyze_run
from gateload.analysis.runs import Run, load_run
from gateload.analysis.schema import META_FILE, read_samples
from gateload.analysis.steady import steady_windows
from gateload.analysis.synthetic import build_run, write_run

BOOT = 50  # point estimates do not depend on the bootstrap; keep it cheap


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # several part files, as the recorder writes them; SMALL is seeded (seed 0)
    return write_run(SMALL, tmp_path_factory.mktemp("to_pandas"), rows_per_part=4000)


@pytest.fixture(scope="module")
def run(run_dir: Path) -> Run:
    return load_run(run_dir)


@pytest.fixture(scope="module")
def df(run: Run) -> pd.DataFrame:
    return run.to_pandas()


def test_one_row_per_sample_with_the_raw_values(run_dir: Path, df: pd.DataFrame) -> None:
    raw = read_samples(run_dir).to_pandas().sort_values("t_start", kind="stable").reset_index(drop=True)
    meta = json.loads((run_dir / META_FILE).read_text())
    assert len(df) == len(raw) == meta["sample_count"]
    assert df.time.is_monotonic_increasing
    # the same samples in the same order: start times, durations, operations and outcomes
    epoch = df.timestamp.astype("int64").to_numpy() / 1e9
    np.testing.assert_allclose(epoch, raw.t_start.to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(df.duration_ms.to_numpy(), raw.duration_ms.to_numpy())
    assert (df.op.astype(str) == raw.type.astype(str) + " " + raw.name.astype(str)).all()
    assert (df.type.astype(str) == raw.type.astype(str)).all()
    assert (df.name.astype(str) == raw.name.astype(str)).all()
    np.testing.assert_array_equal(df.success.to_numpy(), raw.success.to_numpy())
    assert (df.error.isna() == raw.error.isna()).all()
    assert (df.error.dropna().astype(str) == raw.error.dropna().astype(str)).all()
    assert (df.server.astype(object).fillna("-") == raw.server.astype(object).fillna("-")).all()
    # a user is unique across workers: the synthetic run's (worker, user_id) pairs
    assert df.user.nunique() == raw.groupby(["worker", "user_id"], observed=True).ngroups


def test_steps_match_meta_json(run_dir: Path, df: pd.DataFrame) -> None:
    meta = json.loads((run_dir / META_FILE).read_text())
    epoch = df.timestamp.astype("int64").to_numpy() / 1e9
    expected = np.full(len(df), -1)
    for st in meta["steps"]:
        expected[(epoch >= st["start"]) & (epoch < st["end"])] = st["index"]
    assert len(meta["steps"]) == 3
    np.testing.assert_array_equal(df.step.fillna(-1).to_numpy(dtype=np.int64), expected)
    assert set(df.step.dropna().unique()) == {0, 1, 2}


def test_cut_rows_are_exactly_those_the_metrics_leave_out(run: Run, df: pd.DataFrame) -> None:
    stats = analyze_run(run, n_boot=BOOT)
    kept = df[~df.cut]
    assert df.cut.any() and kept.step.notna().all()  # the cut removes something, here only in steps
    for st in stats.steps:
        step = kept[kept.step == st.window.index]
        counts = step.groupby("op", observed=True).size()
        # every operation the step's statistics report (aggregates included) counts the same rows
        assert {op: int(n) for op, n in counts.items()} == {op: s.count for op, s in st.ops.items()}
        assert int((~step.is_aggregate).sum()) == st.all.count
        # and operations lose their ramp and warm-up, aggregates (SESSION rows) keep the whole step
        window = df[df.step == st.window.index]
        cut = window[window.cut]
        assert ((cut.time < st.window.steady_start) | (cut.time >= st.window.steady_end)).all()
        assert not cut.is_aggregate.any()
        kept_ops = window[~window.is_aggregate & ~window.cut]
        assert (kept_ops.time >= st.window.steady_start).all()
        assert (kept_ops.time < st.window.steady_end).all()


def test_a_groupby_reproduces_throughput_and_percentiles(run: Run, df: pd.DataFrame) -> None:
    stats = analyze_run(run, n_boot=BOOT)
    steps = run.steps_to_pandas()
    ok = df[~df.cut & df.success & ~df.is_aggregate]
    throughput = ok.groupby("step").size() / steps.steady_s
    p95 = ok.groupby(["step", "op"], observed=True).duration_ms.quantile(0.95)
    p99_all = ok.groupby("step").duration_ms.quantile(0.99)
    paced = ok[ok.paced].groupby(["step", "op"], observed=True).from_intended_ms.quantile(0.95)
    assert len(stats.steps) == len(steps) == 3
    for st in stats.steps:
        i = st.window.index
        assert throughput[i] == pytest.approx(st.throughput.value, rel=1e-9)
        assert p99_all[i] == pytest.approx(st.all.p("p99").value, rel=1e-9)
        for op, s in st.ops.items():
            if op in ("SESSION logon", "SESSION session"):
                continue  # aggregates: checked below over the whole step
            assert p95[(i, op)] == pytest.approx(s.p("p95").value, rel=1e-9), op
        assert st.paced, "the synthetic run has paced keystrokes"
        for op, p in st.paced.items():
            assert paced[(i, op)] == pytest.approx(p.corrected["p95"].value, rel=1e-9), op
        logon = df[(df.step == i) & (df.role == "logon") & df.success]
        assert logon.duration_ms.quantile(0.5) == pytest.approx(st.ops[st.logon].p("p50").value, rel=1e-9)


def test_catalogue_roles(run: Run, df: pd.DataFrame) -> None:
    by_op = df.groupby("op", observed=True)[["paced", "is_aggregate"]].agg(["min", "max"])
    # a flag is a property of the operation: constant within each op
    assert (by_op.xs("min", axis=1, level=1) == by_op.xs("max", axis=1, level=1)).all().all()
    assert set(df.op[df.paced].unique()) == {"SSH keystroke"}
    assert set(df.op[df.is_aggregate].unique()) == {"SESSION logon", "SESSION session"}
    roles = df.dropna(subset=["role"]).groupby("role", observed=True).op.unique()
    assert {r: list(ops) for r, ops in roles.items()} == {
        "echo": ["SSH keystroke"],
        "logon": ["SESSION logon"],
        "session": ["SESSION session"],
    }
    assert run.catalogue.logon == "SESSION logon"


def test_steps_frame_is_the_analysis_windows(run: Run) -> None:
    frame = run.steps_to_pandas()
    windows = steady_windows(run)
    assert list(frame.index) == [w.index for w in windows]
    np.testing.assert_array_equal(frame.steady_start.to_numpy(), [w.steady_start for w in windows])
    np.testing.assert_array_equal(frame.steady_s.to_numpy(), [w.duration for w in windows])
    assert (frame.steady_start >= frame.start + frame.ramp_s).all()


def test_samples_outside_the_schedule_have_no_step() -> None:
    # meta.json lists only the first two steps: the third step's samples belong to no step
    base = build_run(SMALL)
    steps = base.meta["steps"][:2]
    run = build_run(SMALL.with_(extra_meta={"steps": steps}))
    df = run.to_pandas()
    outside = df[df.step.isna()]
    assert len(outside) > 0 and (outside.time >= 40.0).all() and not outside.cut.any()
    stats = analyze_run(run, n_boot=BOOT)
    kept = df[~df.cut].groupby("step").size()  # groupby drops the <NA> step
    assert list(kept.index) == [0, 1]
    for st in stats.steps:
        assert kept[st.window.index] == st.all.count + sum(
            s.count for op, s in st.ops.items() if op.startswith("SESSION ")
        )


def test_run_without_a_schedule_is_one_step() -> None:
    run = build_run(SMALL.with_(extra_meta={"steps": []}))
    df = run.to_pandas()
    assert (df.step == 0).all()
    stats = analyze_run(run, n_boot=BOOT)
    (st,) = stats.steps
    assert int((~df.cut & ~df.is_aggregate).sum()) == st.all.count


def test_a_run_that_never_settles_keeps_the_second_half_the_report_uses() -> None:
    run = build_run(SMALL.with_(steps=((20, 30.0),), trend_per_s=0.2))
    df = run.to_pandas()
    (w,) = run.steps_to_pandas().itertuples()
    assert not w.steady and w.steady_start == pytest.approx((w.start + w.ramp_s + w.end) / 2)
    stats = analyze_run(run, n_boot=BOOT)
    (st,) = stats.steps
    assert int((~df.cut & ~df.is_aggregate).sum()) == st.all.count
    assert df[~df.cut & ~df.is_aggregate].time.min() >= w.steady_start


def test_the_readme_notebook_example_reproduces_the_report(run_dir: Path, run: Run) -> None:
    # read at test time (others edit the README): its python block, on the synthetic run folder
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (block,) = [b for b in re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M) if "to_pandas" in b]
    *setup, last = block.strip().splitlines()
    code = re.sub(r'load_run\("[^"]*"\)', f"load_run({str(run_dir)!r})", "\n".join(setup))
    scope: dict[str, object] = {}
    exec(code, scope)  # the README's own lines, with the run folder replaced
    p95 = eval(last, scope)  # its last line is the expression whose value it shows
    stats = analyze_run(run, n_boot=BOOT)
    checked = 0
    for st in stats.steps:
        for op, s in st.ops.items():
            assert p95[(st.window.index, op)] == pytest.approx(s.p("p95").value, rel=1e-9), op
            checked += 1
    assert checked >= 3 * 10
