"""Fault windows: stretches of a run where a server's errors or latency depart from the run's baseline.

The detector is blind to what was injected: it reads the samples only, so it finds real incidents too.
Per server (samples whose server is unknown form their own group), over non-SESSION operations:

- **errors**: failures are counted in bins of ``bin_s`` seconds. A bin departs when it holds at least
  ``min_errors`` failures and its error rate exceeds the baseline of its load step (the step's error
  rate on that server) by ``error_margin``.
- **latency**: each successful operation is scored as its duration over the median duration of the
  same operation in the same load step, on all servers (a robust baseline while under half of the
  samples are hit). Per (server, operation) the scores are binned, the bin widened for sparse
  operations so that it expects ``min_samples``; a bin departs when it holds ``min_samples``, its
  median score is at least ``latency_factor`` and its median is ``min_excess_ms`` above the baseline.

Departing bins that touch (a gap of at most one bin) are merged into windows; per server, error and
latency windows that overlap are one window. Saturation past the knee raises a whole step's errors and
latency, which the step baseline absorbs; a window is a departure *within* a step.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from analysis.runs import Run

UNKNOWN = "unknown"  # the group of samples that name no server


@dataclass(frozen=True)
class Settings:
    """Detector thresholds (defaults suit runs of seconds to hours)."""

    bin_s: float = 1.0
    min_errors: int = 3  # failures in a bin before it can depart
    error_margin: float = 0.2  # error rate above the step baseline (absolute)
    min_window_errors: int = 3  # an error window holds at least this many failures
    latency_factor: float = 6.0  # median duration over the step's median, per operation
    min_excess_ms: float = 50.0  # ...and at least this much slower: queueing jitter of fast ops is no fault
    min_samples: int = 5  # successful operations in a latency bin
    max_bin_s: float = 10.0  # a sparse operation's bins grow at most to this width


@dataclass
class FaultWindow:
    """One departure: where (server), when (seconds since the run origin, and epoch), what."""

    server: str
    start: float
    end: float
    start_epoch: float
    end_epoch: float
    kinds: list[str]  # "errors" and/or "latency"
    errors: int = 0
    error_classes: dict[str, int] = field(default_factory=dict)
    ops: list[str] = field(default_factory=list)
    peak_error_rate: float = 0.0
    baseline_error_rate: float = 0.0
    peak_latency_factor: float = 0.0

    @property
    def duration(self) -> float:
        return self.end - self.start

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("start", "end", "peak_error_rate", "baseline_error_rate", "peak_latency_factor"):
            out[key] = round(out[key], 4)
        out["duration"] = round(self.duration, 4)
        return out


# ------------------------------------------------------------------------------------------- detection


def detect_faults(run: Run, settings: Settings | None = None) -> list[FaultWindow]:
    """The run's fault windows, sorted by start then server."""
    cfg = settings or Settings()
    view = _View.of(run)
    if view is None:
        return []
    windows: list[FaultWindow] = []
    order = np.argsort(view.server, kind="stable")
    codes, first = np.unique(view.server[order], return_index=True)
    for code, rows in zip(codes, np.split(order, first[1:]), strict=True):
        name = run.samples.servers[code] if code >= 0 else UNKNOWN
        found = _error_windows(view, rows, cfg) + _latency_windows(view, rows, cfg)
        windows += _merge(name, found, run.origin)
    return sorted(windows, key=lambda w: (w.start, w.server))


@dataclass
class _View:
    """The non-SESSION samples of a run, with each one's step (segment) and latency baseline."""

    t: np.ndarray
    dur: np.ndarray
    op: np.ndarray
    ok: np.ndarray
    error: np.ndarray
    server: np.ndarray
    seg: np.ndarray
    baseline: np.ndarray  # median duration of successful samples of the same op in the same segment
    ops: list[str]
    errors: list[str]

    @classmethod
    def of(cls, run: Run) -> _View | None:
        s = run.samples
        if not len(s):
            return None
        keep = ~s.op_is_session[s.op]
        if not keep.any():
            return None
        t = s.t[keep]
        seg = np.searchsorted(_segments(run), t, side="right") - 1
        op, dur, ok = s.op[keep], s.dur[keep], s.success[keep]
        return cls(
            t, dur, op, ok, s.error[keep], s.server[keep], seg, _baselines(op, seg, dur, ok), s.ops, s.errors
        )


def _segments(run: Run) -> np.ndarray:
    """Start times of the baseline segments: the load steps (one segment when there are none)."""
    starts = sorted({0.0, *(max(0.0, st.start) for st in run.steps)})
    return np.asarray(starts, dtype=float)


def _baselines(op: np.ndarray, seg: np.ndarray, dur: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Per sample: the median duration of the successful samples of its (operation, segment)."""
    key = op.astype(np.int64) * (int(seg.max()) + 1) + seg
    medians: dict[int, float] = {}
    good = np.flatnonzero(ok)
    order = good[np.argsort(key[good], kind="stable")]
    uniq, first = np.unique(key[order], return_index=True)
    for k, rows in zip(uniq, np.split(order, first[1:]), strict=True):
        medians[int(k)] = float(np.median(dur[rows]))
    fallback = float(np.median(list(medians.values()))) if medians else 1.0
    lookup = np.vectorize(lambda k: medians.get(int(k), fallback), otypes=[float])
    uniq_all, inverse = np.unique(key, return_inverse=True)
    return lookup(uniq_all)[inverse] if len(uniq_all) else np.zeros(0)


@dataclass
class _Piece:
    start: float
    end: float
    kind: str
    ops: set[str] = field(default_factory=set)
    errors: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    peak_error_rate: float = 0.0
    baseline_error_rate: float = 0.0
    peak_latency: float = 0.0


def _error_windows(v: _View, rows: np.ndarray, cfg: Settings) -> list[_Piece]:
    """Bins of one server's samples whose error rate departs from its step's (median bin) rate."""
    failed = ~v.ok[rows]
    if failed.sum() < cfg.min_window_errors:
        return []
    t, seg = v.t[rows], v.seg[rows]
    bins = np.floor(t / cfg.bin_s).astype(np.int64)
    n_bins = int(bins.max()) + 1
    total = np.bincount(bins, minlength=n_bins)
    errs = np.bincount(bins, weights=failed, minlength=n_bins)
    rate = np.where(total > 0, errs / np.maximum(total, 1), 0.0)
    # the step baseline: the median of the step's per-bin error rates (robust to the fault's own bins)
    base_rate = np.zeros(n_bins)
    for k in np.unique(seg):
        seg_bins = np.unique(bins[seg == k])
        base_rate[seg_bins] = np.median(rate[seg_bins])
    hot = (errs >= cfg.min_errors) & (rate >= base_rate + cfg.error_margin)
    pieces = []
    for b0, b1 in _runs(hot):
        inside = (t >= b0 * cfg.bin_s) & (t < (b1 + 1) * cfg.bin_s) & failed
        if inside.sum() < cfg.min_window_errors:
            continue
        classes: dict[str, int] = {}
        for code, n in zip(*np.unique(v.error[rows][inside], return_counts=True), strict=True):
            label = v.errors[code] if code >= 0 else "other"
            classes[label] = classes.get(label, 0) + int(n)
        pieces.append(
            _Piece(
                start=float(t[inside].min()),
                end=float(t[inside].max()),
                kind="errors",
                ops={v.ops[o] for o in np.unique(v.op[rows][inside])},
                errors=int(inside.sum()),
                classes=classes,
                peak_error_rate=float(rate[b0 : b1 + 1].max()),
                baseline_error_rate=float(base_rate[b0 : b1 + 1].min()),
            )
        )
    return pieces


def _latency_windows(v: _View, rows: np.ndarray, cfg: Settings) -> list[_Piece]:
    """Per operation of one server: bins whose median duration departs from the step's median."""
    rows = rows[v.ok[rows]]
    order = rows[np.argsort(v.op[rows], kind="stable")]
    codes, first = np.unique(v.op[order], return_index=True)
    pieces = []
    for op, sel in zip(codes, np.split(order, first[1:]), strict=True):
        if len(sel) < cfg.min_samples:
            continue
        sel = sel[np.argsort(v.t[sel], kind="stable")]
        pieces += _op_latency(v, sel, v.ops[int(op)], cfg)
    return pieces


def _op_latency(v: _View, sel: np.ndarray, op: str, cfg: Settings) -> list[_Piece]:
    t, dur, baseline = v.t[sel], v.dur[sel], v.baseline[sel]
    score = dur / np.maximum(baseline, 1e-3)
    excess = dur - baseline
    # sparse operations get wider bins, so that a bin expects min_samples of them
    span = max(float(t[-1] - t[0]), cfg.bin_s)
    width = min(cfg.max_bin_s, max(cfg.bin_s, cfg.min_samples * span / len(t)))
    bins = np.floor(t / width).astype(np.int64)
    uniq, first, counts = np.unique(bins, return_index=True, return_counts=True)
    hot = np.zeros(int(bins[-1]) + 1, dtype=bool)
    peak = np.zeros(len(hot))
    for b, i, n in zip(uniq, first, counts, strict=True):
        if n < cfg.min_samples:
            continue
        median = float(np.median(score[i : i + n]))
        if median >= cfg.latency_factor and np.median(excess[i : i + n]) >= cfg.min_excess_ms:
            hot[b], peak[b] = True, median
    pieces = []
    for b0, b1 in _runs(hot):
        slow = (t >= b0 * width) & (t < (b1 + 1) * width)
        slow &= (score >= cfg.latency_factor) & (excess >= cfg.min_excess_ms)
        if not slow.any():
            continue
        pieces.append(
            _Piece(
                start=float(t[slow].min()),
                end=float((t[slow] + dur[slow] / 1000.0).max()),  # until the slow operations ended
                kind="latency",
                ops={op},
                peak_latency=float(peak[b0 : b1 + 1].max()),
            )
        )
    return pieces


def _runs(hot: np.ndarray, gap: int = 1) -> list[tuple[int, int]]:
    """(first, last) indices of runs of True, joining runs separated by at most ``gap`` False."""
    idx = np.flatnonzero(hot)
    if not len(idx):
        return []
    out = []
    first = prev = int(idx[0])
    for i in idx[1:]:
        if i - prev > gap + 1:
            out.append((first, prev))
            first = int(i)
        prev = int(i)
    out.append((first, prev))
    return out


def _merge(server: str, pieces: list[_Piece], origin: float) -> list[FaultWindow]:
    """Overlapping (or touching within a second) pieces of one server become one window."""
    out: list[FaultWindow] = []
    for p in sorted(pieces, key=lambda p: p.start):
        w = out[-1] if out else None
        if w is None or p.start > w.end + 1.0:
            w = FaultWindow(server, p.start, p.end, origin + p.start, origin + p.end, [])
            out.append(w)
        w.end = max(w.end, p.end)
        w.end_epoch = origin + w.end
        if p.kind not in w.kinds:
            w.kinds.append(p.kind)
        w.ops = sorted(set(w.ops) | p.ops)
        w.errors += p.errors
        for c, n in p.classes.items():
            w.error_classes[c] = w.error_classes.get(c, 0) + n
        w.peak_error_rate = max(w.peak_error_rate, p.peak_error_rate)
        if p.kind == "errors":
            w.baseline_error_rate = p.baseline_error_rate
        w.peak_latency_factor = max(w.peak_latency_factor, p.peak_latency)
    for w in out:
        w.kinds.sort()
    return out


# ------------------------------------------------------------------------------------------ reporting


def fault_metrics(sides: dict[str, Sequence[Any]], settings: Settings | None = None) -> dict[str, Any]:
    """verdict.json ``faults``: per side, per run, its windows (``sides`` maps a side to RunStats)."""
    cfg = settings or Settings()
    return {
        "settings": asdict(cfg),
        "runs": {
            side: [
                {"run": rs.run.name, "windows": [w.as_dict() for w in detect_faults(rs.run, cfg)]}
                for rs in runs
            ]
            for side, runs in sides.items()
        },
    }


def fault_warnings(metrics: dict[str, Any] | None) -> list[str]:
    """One warning per run with fault windows: its statistics include them."""
    out = []
    for side, runs in ((metrics or {}).get("runs") or {}).items():
        for r in runs:
            if r["windows"]:
                where = ", ".join(
                    f"{w['server']} {w['start']:.0f}-{w['end']:.0f} s" for w in r["windows"][:5]
                ) + (", ..." if len(r["windows"]) > 5 else "")
                out.append(
                    f"{side} {r['run']}: {len(r['windows'])} fault window(s) ({where}); "
                    "its statistics include them (see Faults)"
                )
    return out


def _rows(metrics: dict[str, Any] | None) -> Iterable[tuple[str, str, dict[str, Any]]]:
    for side, runs in ((metrics or {}).get("runs") or {}).items():
        for r in runs:
            for w in r["windows"]:
                yield side, r["run"], w


def _describe(w: dict[str, Any]) -> str:
    classes = ", ".join(f"{c} {n}" for c, n in sorted(w["error_classes"].items(), key=lambda x: -x[1]))
    parts = []
    if "errors" in w["kinds"]:
        parts.append(f"{w['errors']} failures ({classes}), peak error rate {w['peak_error_rate']:.0%}")
    if "latency" in w["kinds"]:
        parts.append(f"latency up to {w['peak_latency_factor']:.3g}x the step median")
    return "; ".join(parts)


def _times(w: dict[str, Any]) -> list[str]:
    return [f"{w[k]:.1f}" for k in ("start", "end", "duration")]


def _ops(w: dict[str, Any]) -> str:
    return ", ".join(w["ops"])


def markdown_lines(metrics: dict[str, Any] | None) -> list[str]:
    """The Faults section of summary.md (nothing when no run has a fault window)."""
    rows = list(_rows(metrics))
    if not rows:
        return []
    out = ["", "## Faults", "", "| side | run | server | from s | to s | what | operations |"]
    out.append("|---|---|---|---|---|---|---|")
    for side, run, w in rows:
        when = f"{w['start']:.1f} | {w['end']:.1f}"
        out.append(f"| {side} | `{run}` | {w['server']} | {when} | {_describe(w)} | {', '.join(w['ops'])} |")
    return out


def html_section(metrics: dict[str, Any] | None) -> str:
    """The Faults section of report.html."""
    rows = list(_rows(metrics))
    intro = (
        "<h2>Faults</h2><p>Windows where a server's errors or latency depart from its load step's "
        "baseline (detected from the samples; times in seconds since the run started).</p>"
    )
    if not rows:
        return intro + "<p>No fault window: errors and latency stayed at their step baselines.</p>"
    head = ["side", "run", "server", "from s", "to s", "duration s", "what", "operations"]
    cells = [
        [
            side,
            run,
            w["server"],
            *(f"{w[k]:.1f}" for k in ("start", "end", "duration")),
            _describe(w),
            _ops(w),
        ]
        for side, run, w in rows
    ]
    table = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    table += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in cells]
    return intro + "\n".join(table) + "</table>"


def overlaps(w: FaultWindow | dict[str, Any], start: float, end: float) -> bool:
    """Whether a window (epoch times) overlaps [start, end] (epoch seconds)."""
    a = w.start_epoch if isinstance(w, FaultWindow) else w["start_epoch"]
    b = w.end_epoch if isinstance(w, FaultWindow) else w["end_epoch"]
    return a <= end and b >= start and math.isfinite(a)
