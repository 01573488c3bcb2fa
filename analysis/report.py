"""Reports of a verdict: report.html (self-contained, plots embedded), summary.md, junit.xml, verdict.json.

JUnit: one test case per criterion; FAIL is a <failure>, INCONCLUSIVE a <skipped> with the note saying
what would settle it (CI systems show both; the exit code, 3, tells them apart from a pass). The layout
is the common JUnit schema's: <testsuites> around one <testsuite name tests failures errors skipped time
timestamp hostname>, its <properties> first, then <testcase classname name time>.

A report (``gateload report``) has no verdict: "none" in every file, no criteria, no test cases.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateload.analysis import faults, plots
from gateload.analysis.catalogue import LEGACY, Catalogue
from gateload.analysis.estimates import ref_steps
from gateload.analysis.verdict import FAIL, INCONCLUSIVE, NONE, PASS, Criterion, Verdict
from gateload.errors import InputError

FILES = ("report.html", "summary.md", "junit.xml", "verdict.json")
_BADGE = {PASS: "#2ca02c", FAIL: "#d62728", INCONCLUSIVE: "#ff7f0e", NONE: "#777777"}
NO_VERDICT = (
    "No verdict: a capacity report judges nothing against acceptance margins "
    "(gateload check or compare gives one)."
)


def _title(v: Verdict) -> str:
    """What a report's heading says it concluded: the verdict, or that there is none."""
    return "no verdict" if v.verdict == NONE else v.verdict


def write_reports(verdict: Verdict, out_dir: Path) -> dict[str, Path]:
    """Write the four report files into ``out_dir`` (created if needed)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"{out_dir}: cannot create the report folder ({exc}); choose another --out"
        ) from None
    paths = {name: out_dir / name for name in FILES}
    paths["verdict.json"].write_text(json.dumps(verdict.to_dict(), indent=2, allow_nan=False) + "\n")
    paths["summary.md"].write_text(markdown(verdict))
    paths["junit.xml"].write_text(junit(verdict))
    page = html_report(verdict)
    paths["report.html"].write_text(page)
    paths.update(write_plot_files(page, out_dir / "plots"))
    return paths


IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)">')


def write_plot_files(page: str, folder: Path) -> dict[str, Path]:
    """The report's plots also as PNG files (for slides, tickets and the README)."""
    written: dict[str, Path] = {}
    for alt, b64 in IMG.findall(page):
        name = re.sub(r"[^a-z0-9]+", "-", html.unescape(alt).lower()).strip("-") + ".png"
        if name in written:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        written[name] = folder / name
        written[name].write_bytes(base64.b64decode(b64))
    return {f"plots/{k}": v for k, v in written.items()}


# --------------------------------------------------------------------------------------- formatting


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 10**digits or abs(x) < 1e-3:
        return f"{x:.{digits - 1}g}"
    return f"{x:.{digits}g}"


def _ci(lo: float | None, hi: float | None) -> str:
    if lo is None or not math.isfinite(lo):
        return "n/a"
    if hi is None or not math.isfinite(hi):
        return f"[{fmt(lo)}, unbounded)"  # e.g. N* when some replicates show no coherency penalty
    return f"[{fmt(lo)}, {fmt(hi)}]"


def _est(d: dict[str, Any] | None) -> str:
    if not d or d.get("value") is None:
        return "n/a"
    return f"{fmt(d['value'])} {_ci(d.get('ci_low'), d.get('ci_high'))}"


def _runs_line(v: Verdict) -> list[str]:
    out = []
    for side, runs in v.sides.items():
        for rs in runs:
            state = "" if rs.run.complete else f" **INCOMPLETE ({rs.run.status})**"
            state += "" if rs.steady else " **NO STEADY STATE** (figures: each step's second half)"
            out.append(
                f"- {side}: `{rs.run.name}` ({len(rs.run.samples):,} samples, {len(rs.steps)} steps){state}"
            )
    return out


def _criterion_cells(c: Criterion) -> list[str]:
    return [
        c.name,
        c.verdict,
        fmt(c.estimate),
        _ci(c.ci_low, c.ci_high),
        f"{c.direction} {fmt(c.margin)} {c.unit}".strip(),
        c.note,
    ]


# ------------------------------------------------------------------------------------------ markdown


def markdown(v: Verdict) -> str:
    m = v.metrics
    lines = [f"# gateload {v.kind}: **{_title(v)}**", ""]
    lines += [
        f"Acceptance: `{v.acceptance.name}`; {v.acceptance.confidence:.0%} intervals by "
        f"{m['interval_method']}.",
        "",
    ]
    lines += [*_runs_line(v), ""]
    if v.verdict == NONE:
        lines += [NO_VERDICT, ""]
    else:
        lines += [
            "| criterion | verdict | estimate | interval | margin | note |",
            "|---|---|---|---|---|---|",
        ]
        for c in v.criteria:
            lines.append("| " + " | ".join(cell.replace("|", "/") for cell in _criterion_cells(c)) + " |")
        lines.append("")
    pt = m.get("peak_throughput", {})
    if "ratio" in pt:
        lines.append(
            f"Peak throughput: before {fmt(pt['before'])}, after {fmt(pt['after'])} ops/s; "
            f"ratio {fmt(pt['ratio'])} "
            f"{_ci(*pt['ci'])} ({pt['change']})."
        )
        se = m.get("scaling_efficiency", {})
        lines.append(
            f"Scaling efficiency: {se.get('servers_before')} -> {se.get('servers_after')} servers, "
            "expected gain "
            f"{fmt(se.get('expected_gain'))}, observed {fmt(se.get('observed_gain'))}, efficiency "
            f"{fmt(se.get('value'))} {_ci(se.get('ci_low'), se.get('ci_high'))}."
        )
    elif "run" in pt:
        lines.append(f"Peak throughput: {fmt(pt['run'])} ops/s {_ci(*pt['ci'])}.")
    for side, fit in m.get("usl", {}).items():
        if "error" in fit:
            lines.append(f"USL {side}: not fitted ({fit['error']}).")
        else:
            lines.append(
                f"USL {side}: lambda {fmt(fit['lambda'])}, sigma {fmt(fit['sigma'])}, "
                f"kappa {fmt(fit['kappa'])}, "
                f"N* {fmt(fit['n_star'])}, x_max {fmt(fit['x_max'])} ops/s."
            )
    for side, knees in m.get("knees", {}).items():
        for k in knees:
            where = f"{k['users']} users" if k["users"] is not None else "none (SLA held at every step)"
            lines.append(f"Knee {side} `{k['run']}` {k['op']} (p95 > {fmt(k['limit_ms'])} ms): {where}.")
    lines += faults.markdown_lines(m.get("faults"))
    if v.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in v.warnings]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- junit


def junit(v: Verdict) -> str:
    """JUnit XML in the common schema's layout (see the module docstring); one test case per criterion."""
    counts = {
        "tests": str(len(v.criteria)),
        "failures": str(sum(c.verdict == FAIL for c in v.criteria)),
        "errors": "0",
        "skipped": str(sum(c.verdict == INCONCLUSIVE for c in v.criteria)),
        "time": f"{v.elapsed_s:.3f}",
    }
    root = ET.Element("testsuites", {"name": "gateload", **counts})
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": f"gateload.{v.kind}",
            **counts,
            # the schema's timestamp is ISO 8601 without a zone: this one is UTC
            "timestamp": datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
            "hostname": socket.gethostname() or "localhost",
        },
    )
    props = ET.SubElement(suite, "properties")  # first child, as the schema orders them
    for name, value in (
        ("verdict", v.verdict),
        ("kind", v.kind),
        ("acceptance", v.acceptance.name),
        ("confidence", f"{v.acceptance.confidence:g}"),
        ("incomplete", str(v.incomplete).lower()),
    ):
        ET.SubElement(props, "property", name=name, value=value)
    for c in v.criteria:
        # judging a criterion takes no time of its own: the suite's time is the whole analysis
        case = ET.SubElement(suite, "testcase", classname=f"gateload.{v.kind}", name=c.name, time="0.000")
        text = (
            f"{c.description}: {fmt(c.estimate)} {_ci(c.ci_low, c.ci_high)} vs {c.direction} "
            f"{fmt(c.margin)}. {c.note}"
        )
        if c.verdict == FAIL:
            ET.SubElement(case, "failure", message=f"FAIL: {c.name}", type=FAIL).text = text
        elif c.verdict == INCONCLUSIVE:
            ET.SubElement(case, "skipped", message=f"INCONCLUSIVE: {c.note}")
        ET.SubElement(case, "system-out").text = text
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ---------------------------------------------------------------------------------------------- html


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    return "\n".join(out) + "</table>"


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.86em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3} tr.PASS td:nth-child(2){color:#2ca02c;font-weight:bold}
tr.FAIL td:nth-child(2){color:#d62728;font-weight:bold}
tr.INCONCLUSIVE td:nth-child(2){color:#ff7f0e;font-weight:bold}
.badge{display:inline-block;padding:.2em .7em;border-radius:.3em;color:#fff;font-weight:bold}
.warn{background:#fff6e0;border-left:4px solid #ff7f0e;padding:.4em .8em} img{max-width:100%}
code{background:#f4f4f4;padding:0 .2em}
"""


def html_report(v: Verdict) -> str:
    m = v.metrics
    acc = v.acceptance
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>gateload {v.kind}: {_title(v)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>gateload {v.kind} <span class='badge' style='background:{_BADGE[v.verdict]}'>"
        f"{_title(v)}</span></h1>",
        f"<p>Acceptance <code>{html.escape(acc.name)}</code>; {acc.confidence:.0%} intervals by "
        f"{html.escape(m['interval_method'])}. Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>",
    ]
    if v.incomplete:
        parts.append(
            "<p class='warn'><b>INCOMPLETE</b>: at least one run did not complete; it cannot pass.</p>"
        )
    if any(not rs.steady for runs in v.sides.values() for rs in runs):
        parts.append(
            "<p class='warn'><b>NO STEADY STATE</b> in at least one run: its figures are each step's "
            "second half of a run that kept trending, no capacity; its timeline and fault windows stand.</p>"
        )
    parts.append("<h2>Runs</h2>")
    parts.append(
        _table(
            ["side", "run", "status", "samples", "steps", "servers", "path"],
            [
                [
                    side,
                    rs.run.name,
                    rs.run.status
                    + ("" if rs.run.complete else " (INCOMPLETE)")
                    + ("" if rs.steady else " (NO STEADY STATE)"),
                    f"{len(rs.run.samples):,}",
                    len(rs.steps),
                    len(rs.run.servers),
                    str(rs.run.path),
                ]
                for side, runs in v.sides.items()
                for rs in runs
            ],
        )
    )
    parts.append("<h2>Criteria</h2>")
    if v.verdict == NONE:
        parts.append(f"<p>{html.escape(NO_VERDICT)}</p>")
    else:
        parts.append(
            _table(
                ["criterion", "verdict", "estimate", "interval", "margin", "note"],
                [_criterion_cells(c) for c in v.criteria],
                [c.verdict for c in v.criteria],
            )
        )
    parts.append(_key_metrics(v))
    if v.warnings:
        parts.append(
            "<h2>Warnings</h2><div class='warn'><ul>"
            + "".join(f"<li>{html.escape(w)}</li>" for w in v.warnings)
            + "</ul></div>"
        )
    parts.append(_capacity_section(v))
    parts.append(_operations_section(v))
    parts.append(_servers_section(v))
    parts.append(faults.html_section(m.get("faults")))
    parts.append(_health_section(v))
    parts.append(_method_section(judged=v.verdict != NONE))
    parts.append("</body></html>")
    return "\n".join(parts)


def _key_metrics(v: Verdict) -> str:
    m = v.metrics
    rows = []
    pt = m.get("peak_throughput", {})
    if "ratio" in pt:
        rows.append(
            [
                "peak throughput (ops/s)",
                f"{fmt(pt['before'])} {_ci(*pt['before_ci'])}",
                f"{fmt(pt['after'])} {_ci(*pt['after_ci'])}",
                f"{fmt(pt['ratio'])} {_ci(*pt['ci'])}",
                pt["change"],
            ]
        )
        ps = m["peak_sessions_per_s"]
        rows.append(
            [
                "peak sessions/s",
                fmt(ps["before"]),
                fmt(ps["after"]),
                f"{fmt(ps['ratio'])} {_ci(*ps['ci'])}" if ps["ratio"] is not None else "n/a",
                "",
            ]
        )
        se = m["scaling_efficiency"]
        rows.append(
            [
                "scaling efficiency",
                f"{se['servers_before']} servers",
                f"{se['servers_after']} servers",
                f"{fmt(se['value'])} {_ci(se['ci_low'], se['ci_high'])}",
                f"expected gain {fmt(se['expected_gain'])}",
            ]
        )
        er = m["error_rate"]
        rows.append(["error rate", _est(er["before"]), _est(er["after"]), "", ""])
        head = ["metric", "before", "after", "after / before", "change"]
    else:
        rows.append(["peak throughput (ops/s)", f"{fmt(pt.get('run'))} {_ci(*pt.get('ci', [None, None]))}"])
        rows.append(["error rate", _est(m["error_rate"]["run"])])
        head = ["metric", "run"]
    usl_rows = []
    for side, fit in m.get("usl", {}).items():
        if "error" in fit:
            usl_rows.append([side, "not fitted: " + fit["error"], "", "", "", ""])
            continue
        ci = fit.get("ci", {})
        usl_rows.append(
            [side]
            + [
                f"{fmt(fit[k])} {_ci(*ci.get(k, [None, None]))}"
                for k in ("lambda", "sigma", "kappa", "n_star", "x_max")
            ]
        )
    return (
        "<h2>Key metrics</h2>"
        + _table(head, rows)
        + "<h3>Universal Scalability Law</h3>"
        + _table(["side", "lambda", "sigma", "kappa", "N*", "x_max (ops/s)"], usl_rows)
    )


def _catalogue(v: Verdict) -> Catalogue:
    """The operations catalogue of the first run compared (meta.json; the SSH one for older runs)."""
    runs = next((r for r in v.sides.values() if r), None)
    return runs[0].run.catalogue if runs else LEGACY


def _capacity_section(v: Verdict) -> str:
    sla = v.acceptance.sla_limits(_catalogue(v).logon)
    out = [
        "<h2>Capacity</h2>",
        _img(plots.capacity(v.sides, sla), "throughput and latency vs sessions"),
        _img(plots.usl(v.sides), "USL fit"),
    ]
    for side, runs in v.metrics.get("steps", {}).items():
        for r in runs:
            rows = [
                [
                    s["step"],
                    s["users"],
                    fmt(s["users_observed"]),
                    s["steady_s"],
                    s["warmup_cut_s"],
                    "yes" if s["steady"] else "NO",
                    _est(s["throughput"]),
                    _est(s["sessions_per_s"]),
                    _est(s["error_rate"]),
                    _est(s["p50_ms"]),
                    _est(s["p95_ms"]),
                    _est(s["p99_ms"]),
                    _est(s["logon_p95_ms"]),
                    fmt(s["littles_law_ratio"]),
                ]
                for s in r["steps"]
            ]
            out.append(
                f"<h3>{html.escape(side)} <code>{html.escape(r['run'])}</code>"
                f"{'' if r['complete'] else ' (INCOMPLETE)'}</h3>"
            )
            out.append(
                _table(
                    [
                        "step",
                        "users",
                        "observed",
                        "steady s",
                        "warm-up cut s",
                        "steady",
                        "ops/s",
                        "sessions/s",
                        "error rate",
                        "p50 ms",
                        "p95 ms",
                        "p99 ms",
                        "logon p95 ms",
                        "Little X(R+Z)/N",
                    ],
                    rows,
                )
            )
    knees = [
        [
            side,
            k["run"],
            k["op"],
            fmt(k["limit_ms"]),
            k["users"] if k["users"] is not None else "none",
            _est(k["p95"]) if k["p95"] else "",
        ]
        for side, ks in v.metrics.get("knees", {}).items()
        for k in ks
    ]
    if knees:
        out.append("<h3>Knee (first step whose p95 interval lies wholly above the SLA)</h3>")
        out.append(_table(["side", "run", "operation", "SLA p95 ms", "knee users", "p95 there"], knees))
    for side, runs in v.sides.items():
        for rs in runs[:1]:
            out.append(
                _img(
                    plots.timeseries(rs, f"{side} {rs.run.name}: time series (shaded: steady windows used)"),
                    "time series",
                )
            )
    return "\n".join(out)


def _operations_section(v: Verdict) -> str:
    ops = v.metrics.get("operations") or {}
    if not ops:
        return "<h2>Operations</h2><p>No reference load declared or reached: no per-operation comparison.</p>"
    acc = v.acceptance
    out = [f"<h2>Operations at the reference load ({fmt(acc.reference_users)} users)</h2>"]
    sides = [s for s in ("before", "after") if any(s in r for r in ops.values())]
    head = ["operation"] + [f"{s} {q}" for s in sides for q in ("n", "p50", "p95", "p99", "max", "errors")]
    compare = all(s in sides for s in ("before", "after"))
    if compare:
        head += ["p95 after/before", "change"]
    rows = []
    for op, r in ops.items():
        row = [op + (" (paced: from intended start)" if r.get("paced") else "")]
        for s in sides:
            d = r.get(s)
            row += (
                [
                    d["count"],
                    _est(d["p50"]),
                    _est(d["p95"]),
                    _est(d["p99"]),
                    fmt(d["max"]),
                    fmt(d["error_rate"]),
                ]
                if d
                else [""] * 6
            )
        if compare:
            row += [_est(r.get("p95_ratio")), r.get("change", "")]
        rows.append(row)
    out.append(_table(head, rows))
    ref_sides = {}
    for side, runs in v.sides.items():
        steps, _ = ref_steps(runs, acc)
        ref_sides[side] = steps
    if any(ref_sides.values()):
        cat = _catalogue(v)
        ops = ["ALL"] + [op for op in (cat.logon, cat.echo) if op]  # the roles the CDFs show
        out.append(_img(plots.cdfs(ref_sides, ops), "latency CDFs"))
    errs = v.metrics.get("errors_by_class", {})
    if any(errs.values()):
        out.append("<h3>Errors by class (steady windows, all steps): count (rate per operation)</h3>")
        classes = sorted({k for e in errs.values() for k in e})
        rows = [
            [
                c,
                *[
                    f"{errs[s][c]['count']} ({fmt(errs[s][c]['rate'])})" if c in errs[s] else "0"
                    for s in errs
                ],
            ]
            for c in classes
        ]
        out.append(_table(["class", *errs], rows))
    return "\n".join(out)


def _servers_section(v: Verdict) -> str:
    table = v.metrics.get("servers") or {}
    if not table:
        return "<h2>Servers</h2><p>No sample names its backend server: per-server share unavailable.</p>"
    rows = [
        [
            name,
            "new" if d["new"] else "",
            _est(d["share_of_even"]),
            d["ops_at_reference"],
            fmt(d["p50_ms_at_reference"]),
            fmt(d["p95_ms_at_reference"]),
        ]
        for name, d in table.items()
    ]
    return (
        "<h2>Per-server share</h2><p>Share of the operations with a known server, over all steady windows, "
        "divided by an even share (1.0 = fair share).</p>"
        + _img(plots.servers(table, v.acceptance.min_share_of_even), "per-server share")
        + _table(["server", "", "share / even"], rows)
    )


def _pauses(pauses: list[dict[str, Any]]) -> str:
    """'0', or each pause's length and start (seconds since the run started)."""
    if not pauses:
        return "0"
    return ", ".join(
        f"{fmt(p['seconds'])} s at {fmt(p['start'])} s ({html.escape(p['process'])})" for p in pauses
    )


def _health_section(v: Verdict) -> str:
    out = ["<h2>Generator health and coordinated omission</h2>"]
    for side, runs in v.metrics.get("health", {}).items():
        for h in runs:
            out.append(
                f"<h3>{html.escape(side)} <code>{html.escape(h['run'])}</code>: Locust CPU warnings "
                f"{h['cpu_warnings']}, generator pauses {_pauses(h.get('generator_pauses') or [])}</h3>"
            )
            if h["littles_law"]:
                out.append(
                    _table(
                        ["step", "users N", "X (R + Z)", "ratio", "ok"],
                        [
                            [
                                r["step"],
                                fmt(r["users"]),
                                fmt(r["predicted"]),
                                fmt(r["ratio"]),
                                "yes" if r["ok"] else "NO",
                            ]
                            for r in h["littles_law"]
                        ],
                    )
                )
            if h["paced"]:
                out.append(
                    _table(
                        [
                            "step",
                            "users",
                            "paced op",
                            "planned /s/user",
                            "achieved /s/user",
                            "shortfall",
                            "raw p99 ms",
                            "from intended start p99 ms",
                            "max lateness ms",
                            "flag",
                        ],
                        [
                            [
                                p["step"],
                                p["users"],
                                p["op"],
                                fmt(p["planned_per_user"]),
                                fmt(p["achieved_per_user"]),
                                fmt(p["shortfall"]),
                                fmt(p["raw_p99_ms"]),
                                fmt(p["corrected_p99_ms"]),
                                fmt(p["late_max_ms"]),
                                "SHORT" if p["flagged"] else "",
                            ]
                            for p in h["paced"]
                        ],
                    )
                )
    return "\n".join(out)


def _method_section(judged: bool = True) -> str:
    verdicts = (
        "<li>Verdicts: PASS only when the whole interval clears the margin, FAIL when it lies wholly on the "
        "wrong side, INCONCLUSIVE otherwise.</li>"
        if judged
        else ""
    )
    return (
        "<h2>Method</h2><ul>"
        "<li>Warm-up: each step's ramp is cut from the schedule, then MSER-5 on the binned latency and "
        "throughput series cuts the transient.</li>"
        "<li>Intervals: circular block bootstrap over time blocks within each steady window (blocks twice "
        "the Politis-White length, bias-corrected, Student t with blocks - 1 degrees of freedom), so "
        "autocorrelation is respected; with 3 or more replicates per side, between-run variance (Student t; "
        "Welch on log ratios).</li>"
        f"{verdicts}"
        "<li>Throughput counts successful operations, not the aggregate rows that span them (SESSION logon "
        "and session, or what the run's operations catalogue marks aggregate); latency percentiles are of "
        "successful operations; paced operations are measured from their intended start (coordinated "
        "omission).</li>"
        "<li>Percentile replicates come from log-bucketed histograms (bucket error under 0.2 %); point "
        "estimates are exact.</li></ul>"
    )
