"""Fault windows: stretches of a run where a server's errors or latency depart from the run's baseline.

The detector is blind to what was injected: it reads the samples only, so it finds real incidents too.
Per server (samples whose server is unknown form their own group), over non-SESSION operations, each
sample is *bad* when it failed, or when it was slow: ``latency_factor`` times the median duration of
the same operation in the same load step (on all servers: a robust baseline while under half of the
samples are hit) and ``min_excess_ms`` above it; not in a step's ramp or the ``settle_s`` after it,
where a herd of new users logging on at once is slow by nature.

Bad samples are counted in bins of ``bin_s`` seconds (by start time). A bin departs when its share of
bad samples exceeds its load step's baseline (the median of the step's per-bin shares on that server)
by ``margin`` and by three standard errors. Departing bins that touch (a gap of at most one bin) form
a window, kept when it holds ``min_bad`` bad samples; it lasts from the first bad sample's start to
the last one's end. A stalled server yields few samples, each very late, so the evidence is counted
per sample, not per operation. Saturation past the knee raises a whole step's errors and latency,
which the step baseline absorbs: a window is a departure *within* a step.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gateload.analysis.runs import Run

UNKNOWN = "unknown"  # the group of samples that name no server


@dataclass(frozen=True)
class Settings:
    """Detector thresholds (defaults suit runs of seconds to hours)."""

    bin_s: float = 1.0
    min_bad: int = 3  # bad samples in a window
    # all operations of a server: failed or stalled samples above the baseline share by at least this
    error_margin: float = 0.05
    stalled_ms: float = 1000.0  # a success this much slower than its baseline counts as stalled
    # one operation of a server: slow samples above the baseline share by at least this
    latency_margin: float = 0.25
    latency_factor: float = 6.0  # slow: this many times the step's median of the operation...
    min_excess_ms: float = 50.0  # ...and this much above it (queueing jitter of fast operations is no fault)
    settle_s: float = 2.0  # after a step's users are spawned, slowness is the ramp's (failures still count)


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
    slow: int = 0
    error_classes: dict[str, int] = field(default_factory=dict)
    ops: list[str] = field(default_factory=list)
    peak_bad_share: float = 0.0  # of an operation's samples on the server, in the worst bin
    baseline_bad_share: float = 0.0
    peak_latency_factor: float = 0.0  # the slowest sample over its baseline

    @property
    def duration(self) -> float:
        return self.end - self.start

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("start", "end", "peak_bad_share", "baseline_bad_share", "peak_latency_factor"):
            out[key] = round(out[key], 4)
        out["duration"] = round(self.duration, 4)
        return out


# ------------------------------------------------------------------------------------------- detection


def detect_faults(run: Run, settings: Settings | None = None) -> list[FaultWindow]:
    """The run's fault windows, sorted by start then server."""
    cfg = settings or Settings()
    view = _View.of(run, cfg)
    if view is None:
        return []
    windows: list[FaultWindow] = []
    order = np.argsort(view.server, kind="stable")
    codes, first = np.unique(view.server[order], return_index=True)
    for code, rows in zip(codes, np.split(order, first[1:]), strict=True):
        name = run.samples.servers[code] if code >= 0 else UNKNOWN
        rows = rows[np.argsort(view.t[rows], kind="stable")]
        # every operation together: failures and stalled operations
        found = _windows(view, rows, ~view.ok[rows] | view.stalled[rows], cfg.error_margin, name, cfg)
        # each operation alone: slow ones (a slowdown of one kind of work, e.g. SFTP)
        by_op = rows[np.argsort(view.op[rows], kind="stable")]
        _, op_first = np.unique(view.op[by_op], return_index=True)
        for op_rows in np.split(by_op, op_first[1:]):
            op_rows = op_rows[np.argsort(view.t[op_rows], kind="stable")]
            found += _windows(view, op_rows, view.slow[op_rows], cfg.latency_margin, name, cfg)
        windows += _merge(found)
    return sorted(windows, key=lambda w: (w.start, w.server))


@dataclass
class _View:
    """The non-SESSION samples of a run: step (segment), latency score and badness of each."""

    t: np.ndarray
    dur: np.ndarray
    op: np.ndarray
    ok: np.ndarray
    error: np.ndarray
    server: np.ndarray
    seg: np.ndarray
    score: np.ndarray  # duration over the median of the same operation and segment
    slow: np.ndarray
    stalled: np.ndarray
    origin: float
    ops: list[str]
    errors: list[str]

    @classmethod
    def of(cls, run: Run, cfg: Settings) -> _View | None:
        s = run.samples
        if not len(s):
            return None
        keep = ~s.op_is_session[s.op]
        if not keep.any():
            return None
        t = s.t[keep]
        seg = np.searchsorted(_segments(run), t, side="right") - 1
        op, dur, ok = s.op[keep], s.dur[keep], s.success[keep]
        baseline = _baselines(op, seg, dur, ok)
        score = dur / np.maximum(baseline, 1e-3)
        slow = ok & (score >= cfg.latency_factor) & (dur - baseline >= cfg.min_excess_ms)
        slow &= ~_settling(run, t, cfg.settle_s)
        stalled = slow & (dur - baseline >= cfg.stalled_ms)
        return cls(
            t,
            dur,
            op,
            ok,
            s.error[keep],
            s.server[keep],
            seg,
            score,
            slow,
            stalled,
            run.origin,
            s.ops,
            s.errors,
        )


def _segments(run: Run) -> np.ndarray:
    """Start times of the baseline segments: the load steps (one segment when there are none)."""
    starts = sorted({0.0, *(max(0.0, st.start) for st in run.steps)})
    return np.asarray(starts, dtype=float)


def _settling(run: Run, t: np.ndarray, settle_s: float) -> np.ndarray:
    """Samples in a step's ramp or in the ``settle_s`` after it (a herd of new users logs on at once)."""
    out = np.zeros(len(t), dtype=bool)
    for st in run.steps or ():
        ramp_end = st.spawned if st.spawned is not None else st.start
        out |= (t >= st.start) & (t < max(st.start, ramp_end) + settle_s)
    if not run.steps:
        out |= t < settle_s
    return out


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
    uniq_all, inverse = np.unique(key, return_inverse=True)
    values = np.array([medians.get(int(k), fallback) for k in uniq_all], dtype=float)
    return values[inverse]


def _windows(
    v: _View, rows: np.ndarray, bad: np.ndarray, margin: float, name: str, cfg: Settings
) -> list[FaultWindow]:
    """Windows where the share of ``bad`` among ``rows`` (sorted by time) departs from its baseline."""
    if bad.sum() < cfg.min_bad:
        return []
    t, seg = v.t[rows], v.seg[rows]
    bins = np.floor(t / cfg.bin_s).astype(np.int64)
    n_bins = int(bins[-1]) + 1
    total = np.bincount(bins, minlength=n_bins)
    share = np.bincount(bins, weights=bad, minlength=n_bins) / np.maximum(total, 1)
    # the step baseline: the median of the step's per-bin shares (robust to the fault's own bins)
    base = np.zeros(n_bins)
    for k in np.unique(seg):
        seg_bins = np.unique(bins[seg == k])
        base[seg_bins] = np.median(share[seg_bins])
    noise = 3.0 * np.sqrt(base * (1.0 - base) / np.maximum(total, 1))
    hot = (total > 0) & (share > base + np.maximum(margin, noise)) & (share > 0)
    out = []
    for b0, b1 in _runs(hot):
        lo, hi = np.searchsorted(bins, [b0, b1 + 1])
        sel = rows[lo:hi][bad[lo:hi]]
        if len(sel) >= cfg.min_bad:
            out.append(_window(v, sel, name, float(share[b0 : b1 + 1].max()), float(base[b0 : b1 + 1].min())))
    return out


def _window(v: _View, sel: np.ndarray, name: str, peak: float, base: float) -> FaultWindow:
    failed = sel[~v.ok[sel]]
    slow = sel[v.ok[sel]]
    classes: dict[str, int] = {}
    for code, n in zip(*np.unique(v.error[failed], return_counts=True), strict=True):
        label = v.errors[code] if code >= 0 else "other"
        classes[label] = classes.get(label, 0) + int(n)
    start = float(v.t[sel].min())
    end = float((v.t[sel] + v.dur[sel] / 1000.0).max())  # until the last bad operation ended
    kinds = (["errors"] if len(failed) else []) + (["latency"] if len(slow) else [])
    return FaultWindow(
        server=name,
        start=start,
        end=end,
        start_epoch=v.origin + start,
        end_epoch=v.origin + end,
        kinds=kinds,
        errors=len(failed),
        slow=len(slow),
        error_classes=classes,
        ops=sorted({v.ops[o] for o in np.unique(v.op[sel])}),
        peak_bad_share=peak,
        baseline_bad_share=base,
        peak_latency_factor=float(v.score[slow].max()) if len(slow) else 0.0,
    )


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


def _merge(windows: list[FaultWindow]) -> list[FaultWindow]:
    """Windows of one server that overlap or lie within a second of each other become one."""
    out: list[FaultWindow] = []
    for w in sorted(windows, key=lambda w: w.start):
        last = out[-1] if out else None
        if last is None or w.start > last.end + 1.0:
            out.append(w)
            continue
        last.end, last.end_epoch = max(last.end, w.end), max(last.end_epoch, w.end_epoch)
        last.kinds = sorted(set(last.kinds) | set(w.kinds))
        last.errors += w.errors
        last.slow += w.slow
        for c, n in w.error_classes.items():
            last.error_classes[c] = last.error_classes.get(c, 0) + n
        last.ops = sorted(set(last.ops) | set(w.ops))
        last.peak_bad_share = max(last.peak_bad_share, w.peak_bad_share)
        last.peak_latency_factor = max(last.peak_latency_factor, w.peak_latency_factor)
    return out


# ------------------------------------------------------------------------------------------ reporting


def fault_metrics(sides: Mapping[str, Sequence[Any]], settings: Settings | None = None) -> dict[str, Any]:
    """verdict.json ``faults``: per side, per run, its windows (``sides`` maps a side to RunStats)."""
    cfg = settings or Settings()
    return {
        "settings": asdict(cfg),
        "runs": {
            side: [
                {
                    "run": rs.run.name,
                    "windows": [
                        {**w.as_dict(), "measured": _measured(w, rs)} for w in detect_faults(rs.run, cfg)
                    ],
                }
                for rs in runs
            ]
            for side, runs in sides.items()
        },
    }


def _measured(w: FaultWindow, rs: Any) -> bool:
    """Whether the window overlaps a step's steady part: then the run's statistics include it."""
    return any(w.start < st.window.steady_end and w.end > st.window.steady_start for st in rs.steps)


def fault_warnings(metrics: dict[str, Any] | None) -> list[str]:
    """One warning per run with fault windows, saying whether its statistics include them."""
    out = []
    for side, runs in ((metrics or {}).get("runs") or {}).items():
        for r in runs:
            ws = r["windows"]
            if ws:
                where = ", ".join(f"{w['server']} {w['start']:.0f}-{w['end']:.0f} s" for w in ws[:5]) + (
                    ", ..." if len(ws) > 5 else ""
                )
                out.append(f"{side} {r['run']}: {len(ws)} fault window(s) ({where}); {_included(ws)}")
    return out


def _included(windows: list[dict[str, Any]]) -> str:
    inside = sum(1 for w in windows if w.get("measured", True))  # older verdicts: assume the worst
    if inside == len(windows):
        return "its statistics include them (see Faults)"
    if inside == 0:
        return "all outside the measured steady windows: its statistics exclude them (see Faults)"
    return f"{inside} of them in the measured steady windows: its statistics include those (see Faults)"


def _rows(metrics: dict[str, Any] | None) -> Iterable[tuple[str, str, dict[str, Any]]]:
    for side, runs in ((metrics or {}).get("runs") or {}).items():
        for r in runs:
            for w in r["windows"]:
                yield side, r["run"], w


def _describe(w: dict[str, Any]) -> str:
    classes = ", ".join(f"{c} {n}" for c, n in sorted(w["error_classes"].items(), key=lambda x: -x[1]))
    parts = []
    if "errors" in w["kinds"]:
        parts.append(f"{w['errors']} failures ({classes})")
    if "latency" in w["kinds"]:
        parts.append(f"{w['slow']} slow, up to {w['peak_latency_factor']:.3g}x the step median")
    parts.append(f"{w['peak_bad_share']:.0%} of the server's operations at worst")
    return "; ".join(parts)


def _in_stats(w: dict[str, Any]) -> str:
    return "yes" if w.get("measured", True) else "no (cut)"


def _times(w: dict[str, Any]) -> list[str]:
    return [f"{w[k]:.1f}" for k in ("start", "end", "duration")]


def _ops(w: dict[str, Any]) -> str:
    return ", ".join(w["ops"])


def markdown_lines(metrics: dict[str, Any] | None) -> list[str]:
    """The Faults section of summary.md (nothing when no run has a fault window)."""
    rows = list(_rows(metrics))
    if not rows:
        return []
    out = ["", "## Faults", "", "| side | run | server | from s | to s | what | operations | in statistics |"]
    out.append("|---|---|---|---|---|---|---|---|")
    for side, run, w in rows:
        when = f"{w['start']:.1f} | {w['end']:.1f}"
        out.append(
            f"| {side} | `{run}` | {w['server']} | {when} | {_describe(w)} | {_ops(w)} | {_in_stats(w)} |"
        )
    return out


def html_section(metrics: dict[str, Any] | None) -> str:
    """The Faults section of report.html."""
    rows = list(_rows(metrics))
    intro = (
        "<h2>Faults</h2><p>Windows where a server's errors or latency depart from its load step's "
        "baseline (detected from the samples; times in seconds since the run started; in statistics: "
        "whether the window overlaps the steady part the figures are computed from).</p>"
    )
    if not rows:
        return intro + "<p>No fault window: errors and latency stayed at their step baselines.</p>"
    head = ["side", "run", "server", "from s", "to s", "duration s", "what", "operations", "in statistics"]
    cells = [
        [
            side,
            run,
            w["server"],
            *(f"{w[k]:.1f}" for k in ("start", "end", "duration")),
            _describe(w),
            _ops(w),
            _in_stats(w),
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
