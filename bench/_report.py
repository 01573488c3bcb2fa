"""Shared benchmark reporting: print the figures and append one row to bench/RESULTS.md.

    from _report import record
    record("analysis", {"compare_s": 4.2, "peak_rss_mb": 610, "ratio_vs_baseline": 3.1}, "1M samples/run")

Each row says when and where it was measured (date, host, cores, CPU model) and with what (Python and
the key package versions), so figures from different machines are never compared by accident.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PACKAGES = ("numpy", "pandas", "pyarrow", "scipy", "matplotlib", "locust", "asyncssh", "aiohttp", "gevent")
HEADER = (
    "# Benchmark results\n\n"
    "Appended by `bench/_report.py` (`record()`); newest last. Compare figures only between rows of the same "
    "machine and versions.\n\n"
    "| date (UTC) | bench | figures | notes | machine | python | packages |\n"
    "|---|---|---|---|---|---|---|\n"
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return f"{socket.gethostname()}, {os.cpu_count()} CPU, {cpu_model()}"


def versions() -> str:
    out = []
    for name in PACKAGES:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def record(bench: str, figures: dict[str, Any], notes: str = "", results: Path | None = None) -> None:
    """Print ``figures`` and append a row for them to bench/RESULTS.md (or ``results``)."""
    path = results or RESULTS
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M")
    width = max((len(k) for k in figures), default=0)
    print(f"== {bench} ({when} UTC, {machine()})")
    for key, value in figures.items():
        print(f"  {key:<{width}}  {_fmt(value)}")
    if notes:
        print(f"  notes: {notes}")
    text = "; ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
    row = [when, bench, text, notes, machine(), platform.python_version(), versions()]
    new = not path.exists()
    with path.open("a") as fh:
        if new:
            fh.write(HEADER)
        fh.write("| " + " | ".join(_cell(c) for c in row) + " |\n")
