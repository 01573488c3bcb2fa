"""Per run and per load step: throughput, percentiles, errors, servers, paced operations, with intervals.

:func:`analyze_run` cuts each step to its steady window (:mod:`gateload.analysis.steady`), splits the window
into time blocks and draws one circular-block-bootstrap weight matrix for it; every statistic of the step
(throughput, error rate, shares, percentiles of every operation) gets its replicates from that matrix.

Conventions: throughput counts *successful* non-SESSION operations per second (a fast 503 is not
throughput); latency percentiles are over successful operations, failures are counted per error class;
SESSION rows are aggregates, so they give sessions/s and logon time but are never counted as operations.
"SESSION" stands for every aggregate the run's operations catalogue declares
(:mod:`gateload.analysis.catalogue`), and the logon time is that of its ``logon`` operation.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from gateload.analysis import health
from gateload.analysis.runs import GeneratorPause, Run
from gateload.analysis.stats import (
    DEFAULT_BOOT,
    LOG_GAMMA,
    MIN_CI_SAMPLES,
    QUANTILE_NAMES,
    QUANTILES,
    V_MIN_MS,
    BlockHist,
    Estimate,
    block_hist,
    block_memory,
    block_weights,
    boot_quantiles,
    bucket_index,
    from_boot,
    single_threaded_blas,
)
from gateload.analysis.steady import Window, steady_windows

ALL = "ALL"  # every non-aggregate operation together (aggregates: SESSION rows; see
# gateload.analysis.catalogue)
BLOCK_S = 0.5  # target time-block width; the bootstrap resamples runs of blocks
MIN_BLOCKS = 10
MIN_BLOCK_S = 1.0
MIN_K = 5  # at least this many independent blocks (df >= 4), however long the memory
MAX_K = 15  # at most this many independent blocks: weak memory hides in noise (see stats.from_boot)
MAX_BIAS = 0.5  # cap of the block-bias correction (variance at most doubled)
MAX_BLOCKS = 400


@dataclass
class OpStats:
    op: str
    count: int  # all samples in the steady window
    failures: int
    rate: Estimate  # successful operations per second
    error_rate: Estimate
    q: dict[str, Estimate]  # p50/p90/p95/p99 of successful operations, ms
    max: float
    mean: float
    cdf: tuple[np.ndarray, np.ndarray] = field(repr=False, default=(np.zeros(0), np.zeros(0)))

    def p(self, name: str) -> Estimate:
        return self.q.get(name, Estimate(math.nan))


@dataclass
class ServerStats:
    server: str
    count: int
    share: Estimate  # of the operations with a known server
    p50: float
    p95: float
    errors: int


@dataclass
class PacedStats:
    op: str
    rate: health.PacedRate
    corrected: dict[str, Estimate]  # percentiles from the intended start, ms
    max_ms: float  # from the intended start
    late_max_ms: float
    flagged: bool
    cdf: tuple[np.ndarray, np.ndarray] = field(repr=False, default=(np.zeros(0), np.zeros(0)))


@dataclass
class StepStats:
    window: Window
    users_observed: float
    n_blocks: int
    block_s: float
    block_len: int
    df: float  # independent bootstrap blocks - 1
    inflate: float  # block-bias correction of replicate variances
    weights: np.ndarray = field(repr=False)
    throughput: Estimate  # successful non-SESSION ops/s
    request_rate: float  # all non-SESSION ops/s
    sessions: Estimate  # successful logons per second
    error_rate: Estimate
    errors: dict[str, int]
    all: OpStats
    ops: dict[str, OpStats]
    servers: dict[str, ServerStats]
    paced: dict[str, PacedStats]
    little: health.LittleCheck | None
    # per-block counts, kept for statistics that span several steps
    blk_ok: np.ndarray = field(repr=False)
    blk_n: np.ndarray = field(repr=False)
    blk_server: np.ndarray = field(repr=False)  # (blocks, servers of Samples.servers)
    logon: str | None = None  # the run's logon operation (its catalogue's ``logon`` role)

    @property
    def users(self) -> int:
        return self.window.users

    @property
    def concurrency(self) -> float:
        """Concurrency for capacity models: measured user count when recorded, else the planned one."""
        return self.users_observed if self.users_observed > 0 else float(self.window.users)

    def op(self, name: str) -> OpStats | None:
        return self.all if name == ALL else self.ops.get(name)


@dataclass
class Series:
    """Whole-run time series for plots (all samples, warm-up included)."""

    t: np.ndarray
    throughput: np.ndarray
    p95: np.ndarray
    users: np.ndarray


@dataclass
class RunStats:
    run: Run
    steps: list[StepStats]
    confidence: float
    n_boot: int
    series: Series
    warnings: list[str]

    @property
    def servers(self) -> list[str]:
        return self.run.samples.servers

    @property
    def steady(self) -> bool:
        """Whether any step of the run reached a steady state (only a report analyses one that did not)."""
        return any(st.window.steady for st in self.steps)

    def step_near(self, users: float, tolerance: float) -> StepStats | None:
        """The step whose planned users is nearest ``users``, if within ``tolerance`` (relative)."""
        if not self.steps:
            return None
        best = min(self.steps, key=lambda s: (abs(s.users - users), -s.users))
        if users > 0 and abs(best.users - users) / users > tolerance:
            return None
        return best


def analyze_run(
    run: Run,
    *,
    n_boot: int = DEFAULT_BOOT,
    confidence: float = 0.95,
    seed: int = 0,
    little_tolerance: float = health.LITTLE_TOLERANCE,
    paced_tolerance: float = health.PACED_TOLERANCE,
) -> RunStats:
    """Steady-state statistics of every step of a run, with block-bootstrap intervals.

    A run in which no step settles (see :func:`steady_windows`) is analysed too, with a warning that
    its figures describe no steady state (a verdict on it is INCONCLUSIVE).
    """
    windows = steady_windows(run)
    # reproducible, but different for each run so replicates do not share their resampling
    rng = np.random.default_rng([seed, zlib.crc32(run.name.encode())])
    ctx = _Ctx(run, n_boot, confidence, little_tolerance, paced_tolerance)
    with single_threaded_blas():
        steps = [_step(ctx, w, rng) for w in windows]
    warnings = list(run.warnings)
    settled = any(w.steady for w in windows)
    if not settled:
        warnings.append(
            "no steady state in any step (MSER-5: latency or throughput keeps trending): the figures "
            "are each step's second half, no capacity; read the run's timeline and fault windows"
        )
    for st in steps:
        w = st.window
        if not w.steady and settled:
            warnings.append(f"step {w.index} ({w.users} users) has no steady state; its second half was used")
        if w.stop_horizon_s > w.stop_cut_s + 1e-6:  # the cut was capped
            warnings.append(
                f"step {w.index} ({w.users} users): operations were in flight up to {w.stop_horizon_s:.1f} s "
                f"before the run stopped, of a {w.end - w.steady_start:.0f} s window; only the last "
                f"{w.stop_cut_s:.1f} s were cut, so its throughput is under-stated: hold the last step longer"
            )
        if not w.reached_users:
            warnings.append(
                f"step {w.index} never reached its {w.users} users (generator could not spawn them)"
            )
        paused = _named(pauses_in(run, w))
        if st.little is not None and not st.little.ok:
            warnings.append(
                f"step {w.index}: Little's law off by more than {little_tolerance:.0%} "
                f"({st.little.describe()}): "
                + (
                    "the users lost time unmeasured, suspect the load generator"
                    if st.little.ratio < 1
                    else "the users paused less than declared (check think_time_s)"
                )
                + paused
            )
        for p in st.paced.values():
            if p.flagged:
                warnings.append(
                    f"step {w.index}: paced '{p.op}' achieved {p.rate.achieved:.2f}/s per user of "
                    f"{p.rate.planned:.2f}/s planned ({p.rate.shortfall:.0%} short): the pace was not kept"
                    + paused
                )
    if run.cpu_warnings:
        warnings.append(
            f"Locust reported {run.cpu_warnings} CPU warning(s): the load generator was saturated, so "
            "throughput and latency may describe the generator, not the gateway (add --processes)"
        )
    warnings += [
        f"{p.describe()}; samples across it measure the generator, not the target"
        for p in run.generator_pauses
    ]
    return RunStats(run, steps, confidence, n_boot, _series(run), warnings)


def pauses_in(run: Run, w: Window) -> list[GeneratorPause]:
    """The generator pauses that overlap a step's measured (steady) window."""
    return [p for p in run.generator_pauses if p.start < w.steady_end and p.end > w.steady_start]


def _named(pauses: list[GeneratorPause]) -> str:
    """Why a step's health check failed, when generator pauses in its steady window explain it."""
    if not pauses:
        return ""
    return (
        " (" + "; ".join(f"{p.end - p.start:.1f} s generator pause at {p.start:.1f} s" for p in pauses) + ")"
    )


@dataclass
class _Ctx:
    run: Run
    n_boot: int
    confidence: float
    little_tolerance: float
    paced_tolerance: float


def _n_blocks(duration: float) -> int:
    return int(np.clip(round(duration / BLOCK_S), MIN_BLOCKS, MAX_BLOCKS))


def _step(ctx: _Ctx, w: Window, rng: np.random.Generator) -> StepStats:
    s = ctx.run.samples
    a, b = np.searchsorted(s.t, [w.steady_start, w.steady_end])
    span = w.duration
    nb = _n_blocks(span)
    width = span / nb
    t = s.t[a:b]
    blk = np.minimum(((t - w.steady_start) / width).astype(np.int64), nb - 1)
    op = s.op[a:b]
    dur = s.dur[a:b]
    ok = s.success[a:b]
    ns = ~s.op_is_session[op]
    ns_ok = ns & ok

    blk_n = np.bincount(blk[ns], minlength=nb).astype(float)
    blk_ok = np.bincount(blk[ns_ok], minlength=nb).astype(float)
    logd = np.log(np.maximum(dur[ns_ok], 1e-3))
    with np.errstate(invalid="ignore", divide="ignore"):
        blk_lat = np.bincount(blk[ns_ok], weights=logd, minlength=nb) / blk_ok
    block_len, df, inflate = _design(blk_lat, blk_ok, width)
    weights = block_weights(nb, block_len, ctx.n_boot, rng)
    conf = ctx.confidence
    spread = (df, inflate)

    throughput = from_boot(blk_ok.sum() / span, weights @ blk_ok / span, conf, *spread)
    error_rate = _ratio(blk_n - blk_ok, blk_n, weights, conf, spread)

    ops: dict[str, OpStats] = {}
    order = np.argsort(op, kind="stable")
    bounds = np.searchsorted(op[order], np.arange(len(s.ops) + 1))
    for code in range(len(s.ops)):
        idx = order[bounds[code] : bounds[code + 1]]
        if len(idx) and not s.op_is_session[code]:
            ops[s.ops[code]] = _op_stats(
                s.ops[code], dur[idx], ok[idx], blk[idx], nb, weights, span, conf, spread
            )
    all_ops = _op_stats(ALL, dur[ns], ok[ns], blk[ns], nb, weights, span, conf, spread)
    ops.update(_session_ops(ctx, w, block_len * width, rng))

    logon_op = ctx.run.catalogue.logon
    logon = ops.get(logon_op) if logon_op else None
    if logon is not None and logon_op is not None:
        code = s.ops.index(logon_op)
        blk_logon = np.bincount(blk[(op == code) & ok], minlength=nb).astype(float)
        sessions = from_boot(blk_logon.sum() / span, weights @ blk_logon / span, conf, *spread)
    else:
        sessions = Estimate(math.nan)

    errors = _error_classes(s.errors, s.error[a:b][ns & ~ok])
    servers, blk_server = _servers(s.servers, s.server[a:b], blk, ns, ok, dur, nb, weights, conf, spread)
    uc = s.user_count[a:b]
    users_observed = float(uc[uc > 0].mean()) if np.any(uc > 0) else 0.0
    little = None
    z = ctx.run.think_time_s
    if z is not None and ns.any():
        users = users_observed if users_observed > 0 else float(w.users)
        little = health.little_check(s.user[a:b][ns], t[ns], dur[ns], z, users, ctx.little_tolerance)
    paced = _paced(ctx, a, b, blk, nb, weights, spread)
    return StepStats(
        window=w,
        users_observed=users_observed,
        n_blocks=nb,
        block_s=width,
        block_len=block_len,
        df=df,
        inflate=inflate,
        weights=weights,
        throughput=throughput,
        request_rate=float(ns.sum() / span),
        sessions=sessions,
        error_rate=error_rate,
        errors=errors,
        all=all_ops,
        ops=ops,
        servers=servers,
        paced=paced,
        little=little,
        blk_ok=blk_ok,
        blk_n=blk_n,
        blk_server=blk_server,
        logon=logon_op,
    )


def _design(blk_lat: np.ndarray, blk_ok: np.ndarray, width: float) -> tuple[int, float, float]:
    """Bootstrap block length (in time blocks), degrees of freedom and variance correction of a window.

    Twice the Politis-White (MSE-optimal) length: coverage needs less bias than MSE does; at least
    MIN_BLOCK_S, since Politis-White cannot see correlation in a short series; at most a fifth of the
    window. What bias remains is corrected from the series' memory, and the few independent blocks by
    Student t with df = blocks / length - 1 (stats.from_boot).
    """
    nb = len(blk_ok)
    b_lat, mem_lat = block_memory(blk_lat)
    b_cnt, mem_cnt = block_memory(blk_ok)
    floor = math.ceil(MIN_BLOCK_S / width - 1e-9)
    block_len = max(min(max(2 * b_lat, 2 * b_cnt, floor, math.ceil(nb / MAX_K)), nb // MIN_K), 1)
    df = max(nb / block_len - 1.0, 1.0)
    inflate = 1.0 / (1.0 - min(MAX_BIAS, max(mem_lat, mem_cnt) / block_len))
    return block_len, df, inflate


def _error_classes(labels: list[str], codes: np.ndarray) -> dict[str, int]:
    """Failures per error class (codes of the failed samples; -1 = no class recorded)."""
    out = {
        labels[c]: int(n) for c, n in enumerate(np.bincount(codes[codes >= 0], minlength=len(labels))) if n
    }
    if (codes < 0).any():
        out["unclassified"] = int((codes < 0).sum())
    return out


def _session_ops(ctx: _Ctx, w: Window, block_s: float, rng: np.random.Generator) -> dict[str, OpStats]:
    """SESSION rows over the whole step, ramp included.

    Users log on while a step ramps up (a login storm), and a long session may log on only then: the
    logon time "at N users" is that of the logons started during the step, its ramp included. Intervals
    use a block bootstrap of their own over the whole step, with blocks as long as the steady window's.
    """
    s = ctx.run.samples
    a, b = np.searchsorted(s.t, [w.start, w.end])
    op = s.op[a:b]
    sess = s.op_is_session[op]
    if not sess.any():
        return {}
    span = w.end - w.start
    nb = _n_blocks(span)
    width = span / nb
    block_len = max(min(math.ceil(block_s / width - 1e-9), nb // MIN_K), 1)
    weights = block_weights(nb, block_len, ctx.n_boot, rng)
    spread = (max(nb / block_len - 1.0, 1.0), 1.0)
    blk = np.minimum(((s.t[a:b] - w.start) / width).astype(np.int64), nb - 1)
    out = {}
    for code in np.unique(op[sess]):
        sel = op == code
        out[s.ops[code]] = _op_stats(
            s.ops[code],
            s.dur[a:b][sel],
            s.success[a:b][sel],
            blk[sel],
            nb,
            weights,
            span,
            ctx.confidence,
            spread,
        )
    return out


def clip_rate(est: Estimate) -> Estimate:
    """A fraction's interval clipped to [0, 1].

    A rare failure leaves most bootstrap replicates at 0, so the interval falls back to the linear scale
    and its symmetric t half-width reaches below 0 (or above 1 for a rate near 1): bounds no rate can take.
    """
    lo = float(np.clip(est.lo, 0.0, 1.0)) if math.isfinite(est.lo) else est.lo
    hi = float(np.clip(est.hi, 0.0, 1.0)) if math.isfinite(est.hi) else est.hi
    return replace(est, lo=lo, hi=hi)


def _ratio(
    num: np.ndarray, den: np.ndarray, weights: np.ndarray, conf: float, spread: tuple[float, float]
) -> Estimate:
    """failures / operations per block sum, with its bootstrap interval (clipped to [0, 1])."""
    total = den.sum()
    if total <= 0:
        return Estimate(math.nan)
    wd = weights @ den
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.where(wd > 0, (weights @ num) / wd, np.nan)
    return clip_rate(from_boot(float(num.sum() / total), boot, conf, *spread))


def _quantiles(
    hist: BlockHist, values: np.ndarray, weights: np.ndarray, conf: float, spread: tuple[float, float]
) -> dict[str, Estimate]:
    if len(values) == 0:
        return {name: Estimate(math.nan) for name in QUANTILE_NAMES}
    points = np.quantile(values, QUANTILES)
    boot = boot_quantiles(hist, weights, QUANTILES) if len(values) >= MIN_CI_SAMPLES else None
    return {
        name: from_boot(float(points[j]), None if boot is None else boot[:, j], conf, *spread)
        for j, name in enumerate(QUANTILE_NAMES)
    }


def _op_stats(
    name: str,
    dur: np.ndarray,
    ok: np.ndarray,
    blk: np.ndarray,
    nb: int,
    weights: np.ndarray,
    span: float,
    conf: float,
    spread: tuple[float, float],
) -> OpStats:
    good = dur[ok]
    gblk = blk[ok]
    hist = block_hist(gblk, bucket_index(good), nb)
    blk_ok = np.bincount(gblk, minlength=nb).astype(float)
    blk_n = np.bincount(blk, minlength=nb).astype(float)
    return OpStats(
        op=name,
        count=len(dur),
        failures=int(len(dur) - len(good)),
        rate=from_boot(len(good) / span, weights @ blk_ok / span, conf, *spread),
        error_rate=_ratio(blk_n - blk_ok, blk_n, weights, conf, spread),
        q=_quantiles(hist, good, weights, conf, spread),
        max=float(good.max()) if len(good) else math.nan,
        mean=float(good.mean()) if len(good) else math.nan,
        cdf=(hist.values, hist.total()),
    )


def _servers(
    names: list[str],
    server: np.ndarray,
    blk: np.ndarray,
    ns: np.ndarray,
    ok: np.ndarray,
    dur: np.ndarray,
    nb: int,
    weights: np.ndarray,
    conf: float,
    spread: tuple[float, float],
) -> tuple[dict[str, ServerStats], np.ndarray]:
    k = len(names)
    known = ns & (server >= 0)
    if k == 0 or not known.any():
        return {}, np.zeros((nb, k))
    srv = server[known]
    counts = np.bincount(blk[known] * k + srv, minlength=nb * k).reshape(nb, k).astype(float)
    total = counts.sum()
    wc = weights @ counts
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = wc / wc.sum(axis=1, keepdims=True)
    good = ok[known]
    d = dur[known]
    order = np.argsort(srv, kind="stable")
    bounds = np.searchsorted(srv[order], np.arange(k + 1))
    out = {}
    for c in range(k):
        idx = order[bounds[c] : bounds[c + 1]]
        n = int(counts[:, c].sum())
        lat = d[idx][good[idx]]
        p50, p95 = np.quantile(lat, [0.5, 0.95]) if len(lat) else (math.nan, math.nan)
        out[names[c]] = ServerStats(
            server=names[c],
            count=n,
            share=from_boot(n / total, boot[:, c], conf, *spread),
            p50=float(p50),
            p95=float(p95),
            errors=int(len(idx) - good[idx].sum()),
        )
    return out, counts


def _paced(
    ctx: _Ctx, a: int, b: int, blk: np.ndarray, nb: int, weights: np.ndarray, spread: tuple[float, float]
) -> dict[str, PacedStats]:
    s = ctx.run.samples
    planned = ctx.run.paced
    declared = set(planned) | {o.key for o in ctx.run.catalogue.paced}
    ti = s.t_intended[a:b]
    op = s.op[a:b]
    out: dict[str, PacedStats] = {}
    has_intended = np.isfinite(ti)
    codes = set(np.unique(op[has_intended]).tolist()) | {s.ops.index(o) for o in declared if o in s.ops}
    for code in sorted(codes):
        name = s.ops[code]
        sel = (op == code) & s.success[a:b]
        if not sel.any():
            continue
        t = s.t[a:b][sel]
        lat = health.corrected_latency(t, s.dur[a:b][sel], ti[sel])
        hist = block_hist(blk[sel], bucket_index(lat), nb)
        rate = health.paced_rate(s.user[a:b][sel], t, ti[sel], planned.get(name))
        late = (t - ti[sel]) * 1000.0
        flagged = math.isfinite(rate.shortfall) and rate.shortfall > ctx.paced_tolerance
        out[name] = PacedStats(
            op=name,
            rate=rate,
            corrected=_quantiles(hist, lat, weights, ctx.confidence, spread),
            max_ms=float(lat.max()),
            cdf=(hist.values, hist.total()),
            late_max_ms=float(np.nanmax(late)) if np.isfinite(late).any() else math.nan,
            flagged=flagged,
        )
    return out


def _series(run: Run) -> Series:
    """Throughput and p95 per time bin over the whole run (coarse 5 % buckets: for plots only)."""
    s = run.samples
    ns = ~s.op_is_session[s.op] & s.success
    t = s.t[ns]
    if len(t) == 0:
        z = np.zeros(0)
        return Series(z, z, z, z)
    t0, t1 = float(s.t[0]), float(s.t[-1]) + 1e-9
    n_bins = int(np.clip(round(t1 - t0), 20, 600))
    width = (t1 - t0) / n_bins
    b = np.minimum(((t - t0) / width).astype(np.int64), n_bins - 1)
    coarse = bucket_index(s.dur[ns]) // 12
    lo = int(coarse.min())
    span = int(coarse.max()) - lo + 1
    h = np.bincount(b * span + (coarse - lo), minlength=n_bins * span).reshape(n_bins, span)
    c = np.cumsum(h, axis=1)
    tot = c[:, -1]
    rank = np.maximum(np.ceil(0.95 * tot), 1)
    j = (c < rank[:, None]).sum(axis=1)
    p95 = np.where(tot > 0, V_MIN_MS * np.exp((lo + np.minimum(j, span - 1) + 0.5) * 12 * LOG_GAMMA), np.nan)
    ub = np.minimum(((s.t - t0) / width).astype(np.int64), n_bins - 1)
    ucount = np.bincount(ub, weights=s.user_count.astype(float), minlength=n_bins)
    un = np.bincount(ub, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        users = ucount / un
    mids = t0 + (np.arange(n_bins) + 0.5) * width
    return Series(mids, tot / width, p95, users)
