"""Figures for the HTML report, returned as base64 PNG so the report is one self-contained file."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

from gateload.analysis.capacity import fit_runs, logon_p95
from gateload.analysis.metrics import RunStats, StepStats
from gateload.analysis.stats import Estimate

COLORS = {"before": "#7f7f7f", "after": "#1f77b4", "run": "#1f77b4"}


def _figure(
    rows: int = 1, cols: int = 1, size: tuple[float, float] = (9.0, 3.6)
) -> tuple[Figure, np.ndarray]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=90)
    # fixed margins: constrained/tight layout cost more than drawing the figure itself
    fig.subplots_adjust(
        left=0.08 if cols == 1 else 0.07,
        right=0.92 if cols == 1 else 0.98,
        bottom=0.16,
        top=0.88,
        wspace=0.28,
    )
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    return fig, axes


def _png(fig: Figure) -> str:
    """The figure as base64 PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _legend(ax: Axes, fontsize: int) -> None:
    """A legend only when something is labelled (matplotlib warns otherwise)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def _errorbar(ax: Axes, x: Sequence[float], ests: Sequence[Estimate | None], **kw: Any) -> None:
    pts = [(xi, e) for xi, e in zip(x, ests, strict=True) if e is not None and math.isfinite(e.value)]
    if not pts:
        return
    xs = np.array([p[0] for p in pts])
    v = np.array([p[1].value for p in pts])
    lo = np.array([p[1].lo if p[1].has_ci else p[1].value for p in pts])
    hi = np.array([p[1].hi if p[1].has_ci else p[1].value for p in pts])
    ax.errorbar(xs, v, yerr=[np.maximum(v - lo, 0), np.maximum(hi - v, 0)], capsize=3, marker="o", ms=4, **kw)


def capacity(sides: dict[str, list[RunStats]], sla: dict[str, float]) -> str:
    """Throughput and latency against concurrent sessions, per side, with intervals."""
    fig, (ax_x, ax_r) = _figure(1, 2)
    for side, runs in sides.items():
        for i, rs in enumerate(runs):
            steps = rs.steps
            n = [st.concurrency for st in steps]
            label = side if i == 0 else None
            _errorbar(ax_x, n, [st.throughput for st in steps], color=COLORS[side], label=label)
            _errorbar(
                ax_r,
                n,
                [st.all.q["p95"] for st in steps],
                color=COLORS[side],
                label=f"{side} p95 all ops" if i == 0 else None,
            )
            _errorbar(
                ax_r,
                n,
                [logon_p95(st) for st in steps],
                color=COLORS[side],
                ls="--",
                label=f"{side} p95 logon" if i == 0 else None,
            )
    for limit in sla.values():
        ax_r.axhline(limit, color="#d62728", lw=0.8, ls=":")
    ax_x.set(xlabel="concurrent sessions", ylabel="successful ops/s", title="Throughput X(N)")
    ax_r.set(xlabel="concurrent sessions", ylabel="ms", title="p95 latency (SLA dotted)", yscale="log")
    _legend(ax_x, fontsize=8)
    _legend(ax_r, fontsize=7)
    return _png(fig)


def usl(sides: dict[str, list[RunStats]]) -> str:
    """Measured X(N) with the fitted USL curve and N* per side."""
    fig, (ax,) = _figure(1, 1, (9.0, 3.6))
    top = max((st.concurrency for runs in sides.values() for rs in runs for st in rs.steps), default=1.0)
    for side, runs in sides.items():
        fit, _ = fit_runs(runs, max_fits=0)
        n = [st.concurrency for rs in runs for st in rs.steps]
        x = [st.throughput.value for rs in runs for st in rs.steps]
        ax.scatter(n, x, color=COLORS[side], s=14, zorder=3)
        if fit is None:
            continue
        n_max = max(top * 1.5, min(fit.n_star * 1.3, top * 4) if math.isfinite(fit.n_star) else top * 1.5)
        grid = np.linspace(1, n_max, 200)
        ax.plot(
            grid,
            fit.predict(grid),
            color=COLORS[side],
            label=f"{side}: λ={fit.lam:.3g} σ={fit.sigma:.3g} κ={fit.kappa:.2g} N*={fit.n_star:.0f}",
        )
        if math.isfinite(fit.n_star) and fit.n_star <= n_max:
            ax.axvline(fit.n_star, color=COLORS[side], lw=0.8, ls=":")
    ax.set(xlabel="concurrent sessions N", ylabel="successful ops/s", title="Universal Scalability Law fit")
    _legend(ax, fontsize=8)
    return _png(fig)


def cdfs(sides: dict[str, list[StepStats]], ops: Sequence[str]) -> str:
    """Latency CDFs at the reference load (first run of each side); paced ops from the intended start."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = _figure(1, len(ops), (4.5 * len(ops), 3.4))
    for ax, op in zip(axes, ops, strict=False):
        title = op
        for side, steps in sides.items():
            if not steps:
                continue
            st = steps[0]
            if op in st.paced:
                values, counts = st.paced[op].cdf
                title = f"{op} (from intended start)"
            elif (stats := st.op(op)) is not None:
                values, counts = stats.cdf
            else:
                continue
            if len(counts) == 0:
                continue
            frac = np.cumsum(counts) / counts.sum()
            if len(frac) > 600:  # thin to ~600 points: invisible at this size, much faster to draw
                keep = np.unique(np.searchsorted(frac, np.linspace(0, 1, 600)).clip(0, len(frac) - 1))
                values, frac = values[keep], frac[keep]
            ax.step(values, frac, where="post", color=COLORS[side], label=f"{side} ({st.users} users)")
        ax.set(xscale="log", xlabel="ms", ylabel="fraction <= x", title=title)
        # 1-2-5 ticks on a short axis (a log axis shorter than a decade would have no label), decades else
        lo, hi = ax.get_xlim()
        subs = (1.0, 2.0, 5.0) if hi / max(lo, 1e-9) < 100 else (1.0,)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axhline(0.95, color="#999", lw=0.6, ls=":")
        _legend(ax, fontsize=8)
    return _png(fig)


def timeseries(rs: RunStats, title: str) -> str:
    """Throughput and p95 over the whole run; steady windows shaded, cut ramp/warm-up left white."""
    fig, (ax,) = _figure(1, 1, (9.0, 3.0))
    s = rs.series
    ax.plot(s.t, s.throughput, color="#1f77b4", lw=0.8, label="ops/s")
    ax.set(xlabel="seconds since start", ylabel="successful ops/s", title=title)
    ax2 = ax.twinx()
    ax2.plot(s.t, s.p95, color="#ff7f0e", lw=0.8, label="p95 ms")
    ax2.set(ylabel="p95 ms", yscale="log")
    for st in rs.steps:
        w = st.window
        ax.axvline(w.start, color="#555", lw=0.6, ls="--")
        ax.axvspan(w.steady_start, w.steady_end, color="#2ca02c" if w.steady else "#d62728", alpha=0.08)
        ax.text(w.start, 1.0, f" {w.users}", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
    lines = ax.get_lines()[:1] + ax2.get_lines()[:1]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="upper left")
    return _png(fig)


def servers(table: dict[str, dict], threshold: float | None) -> str:
    """Share of an even split per server (1.0 = its fair share)."""
    names = list(table)
    fig, (ax,) = _figure(1, 1, (9.0, 3.0))
    v = [table[n]["share_of_even"]["value"] or 0.0 for n in names]
    lo = [table[n]["share_of_even"]["ci_low"] for n in names]
    hi = [table[n]["share_of_even"]["ci_high"] for n in names]
    err = [
        [max(vi - (li if li is not None else vi), 0) for vi, li in zip(v, lo, strict=True)],
        [max((hi_ if hi_ is not None else vi) - vi, 0) for vi, hi_ in zip(v, hi, strict=True)],
    ]
    colors = ["#1f77b4" if table[n]["new"] else "#7f7f7f" for n in names]
    ax.bar(names, v, yerr=err, color=colors, capsize=2)
    ax.axhline(1.0, color="#333", lw=0.8)
    if threshold is not None:
        ax.axhline(threshold, color="#d62728", lw=0.8, ls=":")
    ax.set(
        ylabel="share / even share",
        title="Per-server share (blue: new servers; dotted: acceptance threshold)",
    )
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    return _png(fig)
