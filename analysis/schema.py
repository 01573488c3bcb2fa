"""The results schema: the one definition shared by the recorder (writer) and the analysis (reader).

A run folder ``<results-dir>/<label>/<run-id>/`` holds:

- ``samples.parquet/``: a directory of Parquet part files ``part-<writer>-<seq>.parquet``, each written
  atomically (temp file + rename), so a killed run leaves every finished batch readable. Read it with
  ``pandas.read_parquet(run / "samples.parquet")`` or :func:`read_samples`.
- ``meta.json``: see :data:`META_KEYS`; written at start with ``status = "running"`` and rewritten at
  the end. ``status`` is ``"completed"`` only when the run ended normally.
- Locust's own outputs: ``locust_stats.csv``, ``locust_stats_history.csv``, ``locust_failures.csv``,
  ``locust_exceptions.csv``, ``locust_report.html``.

This module must not import Locust: ``analysis/`` reads runs on machines without it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
SAMPLES_DIR = "samples.parquet"
META_FILE = "meta.json"

#: One row per request or operation.
SAMPLE_SCHEMA = pa.schema(
    [
        # wall-clock start of the operation, seconds since the epoch
        pa.field("t_start", pa.float64(), nullable=False),
        # when a paced operation was planned to start (coordinated-omission correction); NaN if unpaced
        pa.field("t_intended", pa.float64()),
        # measured duration in milliseconds, sub-millisecond precision
        pa.field("duration_ms", pa.float64(), nullable=False),
        # Locust request_type: HTTP, SSH, SFTP, TUNNEL, SESSION
        pa.field("type", pa.dictionary(pa.int16(), pa.string())),
        pa.field("name", pa.dictionary(pa.int16(), pa.string())),
        pa.field("success", pa.bool_(), nullable=False),
        # error class, e.g. "http_503", "refused", "reset", "timeout", "auth_failed"; null on success
        pa.field("error", pa.dictionary(pa.int16(), pa.string())),
        pa.field("bytes", pa.int64()),
        # which load-generator process recorded it (hostname:pid); user_id is unique within it
        pa.field("worker", pa.dictionary(pa.int16(), pa.string())),
        pa.field("user_id", pa.int32()),
        # users running on the whole test (all workers) when the sample was recorded
        pa.field("user_count", pa.int32()),
        # backend server that served it, when the target reveals it; null otherwise
        pa.field("server", pa.dictionary(pa.int16(), pa.string())),
    ]
)
SAMPLE_COLUMNS = tuple(SAMPLE_SCHEMA.names)

#: Keys of meta.json. ``steps`` is a list of {"index", "start", "end", "users", "spawn_rate"} with
#: epoch-second times; ``paced`` maps a paced operation name to its planned rate per user (ops/s).
META_KEYS = (
    "schema_version",
    "run_id",
    "label",
    "status",  # "running" | "completed" | "interrupted" | "failed"
    "completed",  # bool, status == "completed"
    "started_at",  # epoch seconds
    "ended_at",  # epoch seconds or null
    "profile",  # {"path", "name", "sha256", "servers": [ids], "data": {...without secrets}}
    "shape",  # {"name", "params"}
    "steps",
    "paced",
    # arrivals shape, else null: {"rate", "planned": grid arrivals due by "until" (epoch: the moment the
    # last generator process stopped), "claimed": sessions handed to a user by then}
    "arrivals",
    "think_time_s",  # mean think time between a user's operations, for Little's law
    "args",  # parsed Locust + gateload options, secrets removed
    "versions",  # python, locust, asyncssh, aiohttp, gateload
    "git_revision",
    "host",
    "processes",  # number of load-generator processes
    "sample_count",
    "locust",  # {"requests", "failures", "cpu_warnings"}
    "generator_pauses",  # [{"process", "start", "end", "wall_s", "monotonic_s"}] (clockwatch.py)
    "security",  # {"host_key_verified": bool, "tls_verified": bool}
    "catalogue",  # {"protocols", "operations": [...]}: the run's operations (analysis/catalogue.py)
)


def write_part(run_dir: Path, writer: str, seq: int, table: pa.Table) -> Path:
    """Write one batch of samples atomically as ``samples.parquet/part-<writer>-<seq>.parquet``."""
    parts = Path(run_dir) / SAMPLES_DIR
    parts.mkdir(parents=True, exist_ok=True)
    final = parts / f"part-{writer}-{seq:06d}.parquet"
    fd, tmp = tempfile.mkstemp(dir=parts, prefix=".tmp-", suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(table.cast(SAMPLE_SCHEMA), tmp, compression="zstd")
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return final


def write_meta(run_dir: Path, meta: dict[str, Any]) -> None:
    """Write meta.json atomically, so a reader never sees half a file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".meta-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump({"schema_version": SCHEMA_VERSION, **meta}, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, run_dir / META_FILE)


def part_files(run_dir: Path) -> list[Path]:
    """The finished part files of a run, in a stable order (temp files excluded)."""
    parts = Path(run_dir) / SAMPLES_DIR
    return sorted(p for p in parts.glob("part-*.parquet")) if parts.is_dir() else []


def read_samples(run_dir: Path, columns: list[str] | None = None) -> pa.Table:
    """All finished samples of a run as one Arrow table (part files concatenated, dictionaries unified).

    A corrupt part raises the underlying Arrow/OS error; :func:`gateload.analysis.runs.load_run` turns that
    into a one-line message naming the part.
    """
    cols = list(columns) if columns is not None else list(SAMPLE_COLUMNS)
    tables = [pq.read_table(p, columns=cols) for p in part_files(run_dir)]
    if not tables:
        return SAMPLE_SCHEMA.empty_table().select(cols)
    return pa.concat_tables(tables, promote_options="permissive").unify_dictionaries()
