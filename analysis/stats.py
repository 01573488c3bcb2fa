"""Percentiles and confidence intervals that respect autocorrelation.

Samples of a load test are not independent: a slow second makes many slow requests. So intervals come
from a *circular block bootstrap over time*: a steady window is cut into short time blocks, and each
bootstrap replicate draws runs of ``L`` consecutive blocks (``L`` chosen by the Politis-White rule on the
block series). Every statistic is a function of per-block sufficient statistics (counts, log-bucketed
latency histograms), so a replicate is a weight vector over blocks and all replicates of all statistics
of a window come from one ``(B x blocks)`` weight matrix: ``W @ per_block``. That is what makes the
intervals cheap at a million samples.

Latency histograms use log buckets of ratio ``GAMMA``: a bucket's geometric midpoint is within
``sqrt(GAMMA) - 1`` (0.2 %) of every value in it. Point estimates are exact sample quantiles; only the
bootstrap replicates are read from the histograms.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtri, stdtrit  # scipy.stats would add a second to every start-up

GAMMA = 1.004
LOG_GAMMA = math.log(GAMMA)
V_MIN_MS = 1e-3  # 1 microsecond; shorter durations share the first bucket
QUANTILES = (0.50, 0.90, 0.95, 0.99)
QUANTILE_NAMES = ("p50", "p90", "p95", "p99")
MIN_CI_SAMPLES = 20  # below this a percentile interval means nothing; report the point only
DEFAULT_BOOT = 500  # intervals use the replicates' variance (Student t), not their extreme quantiles


@dataclass
class Estimate:
    """A point estimate, its interval and (when it came from a bootstrap) the replicates.

    ``df`` is the degrees of freedom of the replicates' spread: independent bootstrap blocks minus one.
    """

    value: float
    lo: float = math.nan
    hi: float = math.nan
    boot: np.ndarray | None = field(default=None, repr=False)
    df: float = math.inf
    inflate: float = 1.0  # variance correction of the replicates (block-bootstrap bias)

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def as_dict(self) -> dict[str, float | None]:
        return {"value": _num(self.value), "ci_low": _num(self.lo), "ci_high": _num(self.hi)}


def t_quantile(p: float, df: float) -> float:
    """Student t quantile (scipy.special, so that importing this module stays cheap)."""
    return float(stdtrit(df, p))


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def percentile_ci(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored)."""
    b = np.asarray(boot, dtype=float)
    b = b[np.isfinite(b)]
    if len(b) < 10:
        return math.nan, math.nan
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(b, [a, 1.0 - a])
    return float(lo), float(hi)


def _scale(value: float, boot: np.ndarray) -> bool:
    """Work on the log scale when everything is positive (latency, rates, ratios are skewed)."""
    return value > 0 and bool(np.all(boot > 0))


def boot_var(value: float, boot: np.ndarray, df: float, inflate: float = 1.0) -> tuple[float, bool]:
    """Variance of the replicates on the interval's scale, corrected by k / (k - 1) for k blocks and by
    ``inflate`` for the block bootstrap's bias."""
    b = np.asarray(boot, dtype=float)
    b = b[np.isfinite(b)]
    log = _scale(value, b)
    v = float(np.var(np.log(b) if log else b)) * inflate
    return (v * (df + 1.0) / df if math.isfinite(df) else v), log


def t_from_var(value: float, var: float, df: float, log: bool, confidence: float) -> Estimate:
    if not math.isfinite(value) or not math.isfinite(var):
        return Estimate(value)
    t = (
        t_quantile(0.5 + confidence / 2.0, max(df, 1.0))
        if math.isfinite(df)
        else float(ndtri(0.5 + confidence / 2.0))
    )
    half = t * math.sqrt(var)
    if log:
        return Estimate(value, value * math.exp(-half), value * math.exp(half), df=df)
    return Estimate(value, value - half, value + half, df=df)


def from_boot(
    value: float, boot: np.ndarray | None, confidence: float, df: float = math.inf, inflate: float = 1.0
) -> Estimate:
    """Estimate with a Student-t interval from bootstrap replicates.

    Block bootstraps of short, autocorrelated windows under-estimate the spread (few independent blocks,
    blocks shorter than the memory of the series). So the replicate variance is corrected for the
    block bias (``inflate``, see :func:`block_memory`) and by k/(k-1), and the interval uses Student t
    with ``df = k - 1`` for ``k`` independent blocks, on the log scale for positive quantities.
    Coverage is checked by simulation in tests/test_analysis_stats.py.
    """
    if boot is None or not math.isfinite(value):
        return Estimate(value, boot=boot, df=df, inflate=inflate)
    b = np.asarray(boot, dtype=float)
    if np.isfinite(b).sum() < 10:
        return Estimate(value, boot=boot, df=df, inflate=inflate)
    var, log = boot_var(value, b, df, inflate)
    est = t_from_var(value, var, df, log, confidence)
    est.boot = boot
    est.inflate = inflate
    return est


def welch_df(variances: Sequence[float], dfs: Sequence[float]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of independent variance components."""
    total = sum(variances)
    denom = sum(v * v / d for v, d in zip(variances, dfs, strict=True) if math.isfinite(d) and d > 0)
    if total <= 0 or denom <= 0:
        return math.inf
    return total * total / denom


# ---------------------------------------------------------------------------------------- threads


def _openblas() -> tuple[Callable[[], int], Callable[[ctypes.c_int], None]] | None:
    """numpy's bundled OpenBLAS (get, set number of threads), if it is there."""
    libs = glob.glob(
        os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libscipy_openblas*.so")
    )
    for lib in libs:
        try:
            handle = ctypes.CDLL(lib)  # numpy loaded it already: this is the same library
            return handle.scipy_openblas_get_num_threads64_, handle.scipy_openblas_set_num_threads64_
        except (OSError, AttributeError):
            continue
    return None


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with one OpenBLAS thread, then restore.

    The products here are small (replicates x blocks x buckets); OpenBLAS threads only contend, and on a
    busy 2-core machine a (400 x 114) @ (114 x 675) product measured 10x slower with 2 threads than 1.
    """
    funcs = _openblas()
    if funcs is None:
        yield
        return
    get, set_ = funcs
    before = int(get())
    set_(ctypes.c_int(1))
    try:
        yield
    finally:
        set_(ctypes.c_int(before))


# ------------------------------------------------------------------------------------ block bootstrap


def optimal_block_length(x: np.ndarray) -> int:
    """Politis & White (2004, with Patton et al. 2009 correction) block length for the circular bootstrap.

    ``x`` is a time-ordered series (here: one value per time block). Returns at least 1 and at most
    sqrt(n).
    """
    return block_memory(x)[0]


def block_memory(x: np.ndarray) -> tuple[int, float]:
    """Politis-White block length and the series' memory ``G / g`` (in blocks).

    ``G = sum |k| R(k)`` and ``g = sum R(k)`` (flat-top lag window). A circular block bootstrap with
    blocks of ``b`` under-estimates the variance of a mean by about ``G / (g b)``; the memory lets the
    caller correct for it.
    """
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n < 8:
        return 1, 0.0
    x = x - x.mean()
    if not np.any(x):
        return 1, 0.0
    kn = max(5, math.ceil(math.sqrt(math.log10(n))))
    m_max = min(math.ceil(math.sqrt(n)) + kn, n - 1)
    f = np.fft.rfft(x, 2 * n)
    acov = np.fft.irfft(f * np.conj(f))[: m_max + 1] / n
    rho = acov / acov[0]
    bound = 2.0 * math.sqrt(math.log10(n) / n)
    # smallest m after which kn consecutive autocorrelations are insignificant
    insignificant = np.abs(rho[1:]) < bound
    m_hat = m_max
    for m in range(0, m_max - kn + 1):
        if insignificant[m : m + kn].all():
            m_hat = m
            break
    big_m = min(2 * m_hat, m_max)
    if big_m == 0:
        return 1, 0.0
    k = np.arange(-big_m, big_m + 1)
    t = np.abs(k) / big_m
    lam = np.where(t <= 0.5, 1.0, np.where(t <= 1.0, 2.0 * (1.0 - t), 0.0))
    r = acov[np.abs(k)]
    g = float(np.sum(lam * np.abs(k) * r))
    g0 = float(np.sum(lam * r))
    if g == 0.0 or g0 <= 0.0:
        return 1, 0.0
    d_cb = 4.0 / 3.0 * g0**2
    b = (2.0 * g**2 / d_cb) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    # a noisy autocorrelation estimate can make b explode (huge |G| from spurious lags): cap at sqrt(n)
    return int(np.clip(math.ceil(b), 1, max(1, math.isqrt(n)))), max(g / g0, 0.0)


def block_weights(n_blocks: int, block_len: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Circular block bootstrap as a ``(n_boot, n_blocks)`` matrix of how often each block is drawn.

    Every row sums to ``n_blocks``, so a replicate covers as much time as the original window.
    """
    block_len = max(1, min(block_len, n_blocks))
    k = -(-n_blocks // block_len)
    starts = rng.integers(0, n_blocks, size=(n_boot, k))
    idx = (starts[:, :, None] + np.arange(block_len)).reshape(n_boot, -1)[:, :n_blocks] % n_blocks
    flat = (idx + (np.arange(n_boot) * n_blocks)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_blocks).reshape(n_boot, n_blocks).astype(np.float64)


# ------------------------------------------------------------------------------------- histograms


def bucket_index(values_ms: np.ndarray) -> np.ndarray:
    v = np.maximum(np.asarray(values_ms, dtype=float), V_MIN_MS)
    return np.floor(np.log(v / V_MIN_MS) / LOG_GAMMA).astype(np.int64)


def bucket_value(index: np.ndarray | int) -> np.ndarray:
    """Geometric midpoint of a bucket: within 0.2 % of anything in it."""
    return V_MIN_MS * np.exp((np.asarray(index, dtype=float) + 0.5) * LOG_GAMMA)


@dataclass
class BlockHist:
    """Per-time-block latency histogram of one group.

    ``counts[block, k]`` is the number of samples of that block in bucket ``buckets[k]``.
    """

    buckets: np.ndarray
    counts: np.ndarray

    @property
    def values(self) -> np.ndarray:
        return bucket_value(self.buckets)

    def total(self) -> np.ndarray:
        return self.counts.sum(axis=0)


def block_hist(block: np.ndarray, bidx: np.ndarray, n_blocks: int) -> BlockHist:
    """Histogram of bucket indices ``bidx`` per time block (only non-empty buckets kept)."""
    if len(bidx) == 0:
        return BlockHist(np.zeros(0, np.int64), np.zeros((n_blocks, 0)))
    lo = int(bidx.min())
    span = int(bidx.max()) - lo + 1
    if n_blocks * span <= 8_000_000:
        dense = np.bincount(block * span + (bidx - lo), minlength=n_blocks * span).reshape(n_blocks, span)
        keep = np.flatnonzero(dense.any(axis=0))
        return BlockHist(keep + lo, dense[:, keep].astype(np.float64))
    uniq, inv = np.unique(bidx, return_inverse=True)  # very wide spread: compact first
    k = len(uniq)
    counts = np.bincount(block * k + inv, minlength=n_blocks * k).reshape(n_blocks, k)
    return BlockHist(uniq, counts.astype(np.float64))


def boot_quantiles(hist: BlockHist, weights: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Bootstrap replicates of quantiles ``qs``: array ``(B, len(qs))`` (NaN where a replicate is empty).

    A replicate's cumulative histogram is ``weights @ cumsum(counts)``. Only columns near each quantile are
    computed (a window found from how far the replicates move the point's cumulative share); rows whose
    crossing falls outside it are finished by a binary search over all columns.
    """
    n_boot = weights.shape[0]
    out = np.full((n_boot, len(qs)), np.nan)
    k = hist.counts.shape[1]
    if k == 0:
        return out
    cum = np.cumsum(hist.counts, axis=1)
    full = cum.sum(axis=0)
    n = full[-1]
    tot = weights @ cum[:, -1]
    valid = tot > 0
    values = hist.values
    safe_tot = np.where(valid, tot, 1.0)
    for j, q in enumerate(qs):
        rank = np.maximum(np.ceil(q * tot - 1e-9), 1.0)
        jq = min(int(np.searchsorted(full, max(math.ceil(q * n - 1e-9), 1))), k - 1)
        share = (weights @ cum[:, jq]) / safe_tot
        # window wide enough for ~99 % of the rows; the rest take the binary search below
        dev = float(np.quantile(np.abs(share[valid] - full[jq] / n), 0.99)) if valid.any() else 0.0
        lo_c = max(int(np.searchsorted(full, (q - 1.5 * dev) * n - 1)) - 1, 0)
        hi_c = min(int(np.searchsorted(full, (q + 1.5 * dev) * n + 1)) + 1, k - 1)
        window = weights @ cum[:, lo_c : hi_c + 1]
        hit = window >= rank[:, None]
        first = hit.argmax(axis=1)
        ok = hit.any(axis=1) & ((first > 0) | (lo_c == 0))
        res = lo_c + first
        bad = np.flatnonzero(~ok & valid)
        if bad.size:
            res[bad] = _bsearch(cum, weights[bad], rank[bad])
        out[:, j] = np.where(valid, values[res], np.nan)
    return out


def _bsearch(cum: np.ndarray, weights: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """First column where ``weights @ cum`` reaches ``rank``, row by row (vectorised binary search)."""
    cum_t = np.ascontiguousarray(cum.T)  # (k, blocks): one gather per step reads contiguous rows
    lo = np.zeros(len(rank), dtype=np.int64)
    hi = np.full(len(rank), cum.shape[1] - 1, dtype=np.int64)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        val = np.einsum("bn,bn->b", weights, cum_t[mid])
        ge = val >= rank
        hi = np.where(ge, mid, hi)
        lo = np.where(ge, lo, mid + 1)
    return lo


def hist_quantiles(values: np.ndarray, counts: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Quantiles of one histogram (inverted CDF)."""
    c = np.cumsum(counts)
    if len(c) == 0 or c[-1] <= 0:
        return np.full(len(qs), np.nan)
    ranks = np.maximum(np.ceil(np.asarray(qs) * c[-1] - 1e-9), 1)
    return values[np.minimum(np.searchsorted(c, ranks), len(c) - 1)]


# ---------------------------------------------------------------------------- between-run variance


def t_interval(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """Mean and Student-t interval of replicate estimates (between-run variance)."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if len(v) < 2:
        m = float(v.mean()) if len(v) else math.nan
        return m, math.nan, math.nan
    m = float(v.mean())
    se = float(v.std(ddof=1) / math.sqrt(len(v)))
    t = t_quantile(0.5 + confidence / 2.0, len(v) - 1)
    return m, m - t * se, m + t * se


def welch_log_ratio(after: Sequence[float], before: Sequence[float], confidence: float) -> Estimate:
    """Ratio of geometric means after/before with a Welch t interval on the log scale."""
    a = np.log(np.asarray([x for x in after if x > 0 and math.isfinite(x)], dtype=float))
    b = np.log(np.asarray([x for x in before if x > 0 and math.isfinite(x)], dtype=float))
    if len(a) < 2 or len(b) < 2:
        return Estimate(math.nan)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = a.mean() - b.mean()
    se = math.sqrt(va + vb)
    if se == 0:
        r = math.exp(diff)
        return Estimate(r, r, r)
    df = (va + vb) ** 2 / ((va**2 / (len(a) - 1) if len(a) > 1 else 0) + (vb**2 / (len(b) - 1)))
    t = t_quantile(0.5 + confidence / 2.0, df)
    return Estimate(math.exp(diff), math.exp(diff - t * se), math.exp(diff + t * se))


# ------------------------------------------------------------------------------------- replicates

MIN_REPLICATES = 3  # from this many runs per side, intervals come from between-run variance


def pooled(estimates: Sequence[Estimate], confidence: float) -> Estimate:
    """One side's estimate from its replicate runs.

    With ``MIN_REPLICATES`` or more runs: mean and Student-t interval of the run estimates (between-run
    variance, which includes everything that differs from run to run). With fewer: the mean of the runs,
    its interval from averaging their independent block-bootstrap replicates (within-run variance only).
    """
    est = [e for e in estimates if math.isfinite(e.value)]
    if not est:
        return Estimate(math.nan)
    if len(est) == 1:
        return est[0]
    boots = [e.boot for e in est if e.boot is not None]
    boot = np.mean(boots, axis=0) if len(boots) == len(est) else None
    if len(est) >= MIN_REPLICATES:
        m, lo, hi = t_interval([e.value for e in est], confidence)
        return Estimate(m, lo, hi, boot, df=len(est) - 1)
    value = float(np.mean([e.value for e in est]))
    if boot is None:
        return Estimate(value)
    n = len(est)
    spreads = [float(np.nanvar(b)) for b in boots]  # every estimate has replicates here (boot is not None)
    parts = [v * e.inflate / n**2 for v, e in zip(spreads, est, strict=True)]
    inflate = sum(parts) / (sum(spreads) / n**2) if sum(parts) > 0 else 1.0
    return from_boot(value, boot, confidence, welch_df(parts, [e.df for e in est]), inflate)


def ratio(after: Sequence[Estimate], before: Sequence[Estimate], confidence: float) -> Estimate:
    """after / before with an interval: Welch on logs with enough replicates, else bootstrap replicates
    (independent runs, so the log variances add; Welch-Satterthwaite degrees of freedom)."""
    a_est = [e for e in after if math.isfinite(e.value)]
    b_est = [e for e in before if math.isfinite(e.value)]
    if len(a_est) >= MIN_REPLICATES and len(b_est) >= MIN_REPLICATES:
        return welch_log_ratio([e.value for e in a_est], [e.value for e in b_est], confidence)
    a, b = pooled(a_est, confidence), pooled(b_est, confidence)
    if not (math.isfinite(a.value) and math.isfinite(b.value)) or b.value <= 0:
        return Estimate(math.nan)
    value = a.value / b.value
    if a.boot is None or b.boot is None or value <= 0:
        return Estimate(value)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.where(b.boot > 0, a.boot / b.boot, np.nan)
    va, log_a = boot_var(a.value, a.boot, a.df, a.inflate)
    vb, log_b = boot_var(b.value, b.boot, b.df, b.inflate)
    if not (log_a and log_b):  # a side touches zero: no log scale, fall back to percentiles
        lo, hi = percentile_ci(boot, confidence)
        return Estimate(value, lo, hi, boot)
    # both sides positive: the log variances of independent runs add
    est = t_from_var(value, va + vb, welch_df([va, vb], [a.df, b.df]), True, confidence)
    est.boot = boot
    return est


def interval_method(n_before: int, n_after: int | None = None) -> str:
    sides = [n_before] if n_after is None else [n_before, n_after]
    if all(n >= MIN_REPLICATES for n in sides):
        return f"between-run variance (Student t over {'/'.join(map(str, sides))} replicates)"
    return f"circular block bootstrap over time within runs ({'/'.join(map(str, sides))} run(s))"
