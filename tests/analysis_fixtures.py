"""Synthetic runs for the analysis tests (the truth of each is known: see gateload.analysis.synthetic)."""

from __future__ import annotations

from pathlib import Path

from gateload.analysis.synthetic import OpSpec, SynthSpec, write_run

REF = 30  # users of the reference step
REF_STEPS = ((10, 20.0), (30, 40.0), (60, 20.0))
OLD = ("old-01", "old-02", "old-03", "old-04")
NEW = tuple(f"new-{i:02d}" for i in range(1, 9))

# Small and quick: three 20-s steps past the knee (USL N* ~ 31 users), some 10k samples.
SMALL = SynthSpec(
    steps=((10, 20.0), (30, 20.0), (60, 20.0)),
    ramp_s=2.0,
    usl=(30.0, 0.03, 0.001),
    paced_rate=0.5,
    session_s=10.0,
)

# One operation, one step, moderate autocorrelation: for coverage simulations.
EXEC_ONLY = (OpSpec("SSH", "exec", 1.0, 20.0, sigma=0.5),)
COVERAGE = SynthSpec(
    steps=((20, 60.0),),
    ramp_s=0.0,
    warmup_factor=1.0,
    usl=(5.0, 0.0, 0.0),
    ops=EXEC_ONLY,
    paced_rate=0.0,
    ar_sd=0.15,
    ar_tau_s=1.0,
    rate_sd=0.15,
    load_latency=False,
    session_s=1e9,
)


def before_after(tmp: Path, gain: float = 2.0, latency: float = 0.7, seed: int = 0) -> tuple[Path, Path]:
    """A 4-server before run and a 12-server after run with known throughput gain and latency factor.

    The reference step (30 users) is held 40 s, long enough for a 30 % latency shift to be resolved.
    """
    lam, sigma, kappa = SMALL.usl
    steps = REF_STEPS
    before = SMALL.with_(label="before", run_id="b1", servers=OLD, seed=seed, steps=steps)
    after = SMALL.with_(
        label="after",
        run_id="a1",
        steps=steps,
        servers=OLD + NEW,
        usl=(lam * gain, sigma, kappa),
        latency_scale=latency,
        load_latency=False,
        seed=seed + 1000,
    )
    before = before.with_(load_latency=False)
    # several part files per run, as the recorder writes them
    return write_run(before, tmp, rows_per_part=5000), write_run(after, tmp, rows_per_part=5000)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
