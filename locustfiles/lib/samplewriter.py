"""Samples to disk: batches of column lists become Arrow tables, written as part files in a real OS thread.

The recorder (``recorder.py``) fills the column lists named in :data:`HOT_COLUMNS` and hands whole
batches to a :class:`PartWriter`; the writer thread builds the table in
``gateload.analysis.schema.SAMPLE_SCHEMA`` and writes it with ``gateload.analysis.schema.write_part``, so
greenlets never wait for the disk.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# pyarrow imports pandas on its first table, 0.3-0.4 s holding the GIL in the writer thread: users were
# 250 ms late at the start of every run. Imported here, before any load.
import pandas  # noqa: F401
import pyarrow as pa
from gevent.event import AsyncResult
from gevent.threadpool import ThreadPool

from gateload.analysis.schema import SAMPLE_SCHEMA, write_part

logger = logging.getLogger(__name__)

#: Columns the recorder's hot path fills; ``worker`` is added when a batch is written.
HOT_COLUMNS = (
    "t_start",
    "t_intended",
    "duration_ms",
    "type",
    "name",
    "success",
    "error",
    "bytes",
    "user_id",
    "user_count",
    "server",
)
_TYPES = {f.name: f.type for f in SAMPLE_SCHEMA}

Chunk = tuple[dict[str, list[Any]], str]  # (columns, worker name)


def to_table(cols: Mapping[str, list[Any]], worker: str) -> pa.Table:
    """One batch of column lists as an Arrow table in the sample schema."""
    n = len(cols["t_start"])
    arrays = {name: _array(name, cols[name]) for name in HOT_COLUMNS}
    arrays["worker"] = pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int16()), pa.array([worker]))
    return pa.table({name: arrays[name] for name in SAMPLE_SCHEMA.names}).cast(SAMPLE_SCHEMA)


def _array(name: str, values: list[Any]) -> pa.Array:
    kind = _TYPES[name]
    try:
        return pa.array(values, kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        # One odd value (a user id that is a string, a name that is not) must not cost the batch.
        return pa.array([_coerce(v, kind) for v in values], kind)


def _coerce(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    try:
        if pa.types.is_floating(kind):
            return float(value)
        if pa.types.is_integer(kind):
            return int(value)
        if pa.types.is_boolean(kind):
            return bool(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return str(value)


def write_chunks(run_dir: Path, writer: str, seq: int, chunks: list[Chunk]) -> int:
    """Write batches as one part file; returns the rows written (runs in the writer thread)."""
    tables = [to_table(cols, worker) for cols, worker in chunks if cols["t_start"]]
    if not tables:
        return 0
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables).unify_dictionaries()
    write_part(run_dir, writer, seq, table.combine_chunks())
    return int(table.num_rows)


class PartWriter:
    """Writes batches as part files in one real OS thread; waited for from greenlets only."""

    def __init__(self) -> None:
        self._pool: ThreadPool | None = None  # created on first use: after --processes has forked
        self._pending: AsyncResult[int] | None = None
        self._pending_rows = 0
        self.run_dir: Path | None = None
        self.name = ""
        self.seq = 0
        self.rows = 0
        self.errors: list[str] = []

    def open(self, run_dir: Path, name: str) -> None:
        """Start a new run's part files (``<name>-<seq>``) in ``run_dir``."""
        self.wait()
        self.run_dir, self.name, self.seq, self.rows, self.errors = run_dir, name, 0, 0, []

    def submit(self, chunks: list[Chunk]) -> None:
        """Hand a batch to the writer thread, after the previous one is on disk."""
        self.wait()
        if self._pool is None:
            self._pool = ThreadPool(1)
        assert self.run_dir is not None
        self._pending_rows = sum(len(cols["t_start"]) for cols, _ in chunks)
        self._pending = self._pool.spawn(write_chunks, self.run_dir, self.name, self.seq, chunks)
        self.seq += 1

    def wait(self) -> None:
        """Wait (cooperatively) until the last batch handed over is written."""
        if self._pending is None:
            return
        try:
            rows = self._pending.get() or 0  # if Ctrl-C interrupts this, the next wait() collects it
        except Exception as exc:
            rows = 0
            self.errors.append(f"{self._pending_rows} samples not written: {type(exc).__name__}: {exc}")
            logger.error("gateload recorder: writing part %s failed: %s", self.seq - 1, exc)
        self._pending = None
        self.rows += rows
