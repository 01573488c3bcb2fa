"""Reading runs: one run folder, or a label folder of replicates, validated into numpy arrays.

Every problem with the input (missing folder, unreadable meta.json, corrupt Parquet part, no samples,
incomplete run) is an :class:`InputError` with a one-line message that names the file and the fix.
An incomplete run (status other than ``completed``) is refused unless the caller allows it; it is then
marked ``complete = False`` and every report says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gateload.analysis.catalogue import LEGACY, Catalogue, catalogue_of

# Step and Samples (the arrays a run is read into) live in samples.py, below steady.py: re-exported here
from gateload.analysis.samples import Samples as Samples
from gateload.analysis.samples import Step as Step
from gateload.analysis.schema import META_FILE, SAMPLES_DIR, SCHEMA_VERSION, part_files
from gateload.errors import InputError

if TYPE_CHECKING:  # pandas is imported on first use: the numpy core and the CLI do not need it
    import pandas as pd

# Columns the analysis needs; `bytes` is not read (nothing here uses it).
READ_COLUMNS = (
    "t_start",
    "t_intended",
    "duration_ms",
    "type",
    "name",
    "success",
    "error",
    "worker",
    "user_id",
    "user_count",
    "server",
)
_PAUSE_NUMBERS = ("start", "end", "wall_s", "monotonic_s")  # of a meta.json generator_pauses entry
SESSION_TYPE = "SESSION"  # aggregate rows of runs whose catalogue does not say (always true so far)


@dataclass(frozen=True)
class GeneratorPause:
    """A stretch in which one load-generator process ran nothing (meta.json ``generator_pauses``)."""

    process: str
    start: float  # seconds since the run origin, like the samples
    end: float
    wall_s: float  # how far each clock moved across it
    monotonic_s: float

    @property
    def clock_jump(self) -> bool:
        """The wall clock moved while the monotonic clock stood still: a paused VM or a stepped clock."""
        return abs(self.wall_s - self.monotonic_s) > max(abs(self.wall_s), self.monotonic_s) / 2

    def describe(self) -> str:
        how = (
            f"its wall clock moved {self.wall_s:.1f} s and its monotonic clock {self.monotonic_s:.1f} s: "
            "a paused virtual machine or a stepped clock"
            if self.clock_jump
            else "it was not scheduled: a stopped process, a blocked event loop or a paused virtual machine"
        )
        return (
            f"the load generator ({self.process}) ran nothing for {self.end - self.start:.1f} s "
            f"at {self.start:.1f}-{self.end:.1f} s ({how})"
        )


@dataclass
class Run:
    """A validated run folder."""

    path: Path
    meta: dict[str, Any]
    samples: Samples
    origin: float  # epoch seconds that sample times are relative to
    complete: bool
    warnings: list[str] = field(default_factory=list)
    catalogue: Catalogue = LEGACY  # meta.json ``catalogue``; runs written before it get the SSH one

    @property
    def label(self) -> str:
        return str(self.meta.get("label") or self.path.parent.name)

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.path.name)

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "unknown"))

    @property
    def name(self) -> str:
        return f"{self.label}/{self.run_id}"

    @property
    def steps(self) -> list[Step]:
        return _steps(self)

    @property
    def paced(self) -> dict[str, float]:
        paced = self.meta.get("paced") or {}
        return {str(k): float(v) for k, v in paced.items() if _is_number(v) and float(v) > 0}

    @property
    def think_time_s(self) -> float | None:
        z = self.meta.get("think_time_s")
        return float(z) if _is_number(z) and float(z) >= 0 else None

    @property
    def servers(self) -> list[str]:
        """Backend ids of the target (meta.profile.servers), else those seen in the samples."""
        profile = self.meta.get("profile") or {}
        declared = profile.get("servers") if isinstance(profile, dict) else None
        if isinstance(declared, list) and declared:
            return [str(s) for s in declared]
        return sorted(self.samples.servers)

    @property
    def cpu_warnings(self) -> int:
        locust = self.meta.get("locust") or {}
        value = locust.get("cpu_warnings", 0) if isinstance(locust, dict) else 0
        return int(value) if _is_number(value) else 0

    @property
    def generator_pauses(self) -> list[GeneratorPause]:
        """Stretches in which a generator process ran nothing; samples across them measure no target."""
        raw = self.meta.get("generator_pauses")
        pauses = []
        for p in raw if isinstance(raw, list) else ():
            if isinstance(p, dict) and all(_is_number(p.get(k)) for k in _PAUSE_NUMBERS):
                a, b = sorted((float(p["start"]), float(p["end"])))
                process = str(p.get("process") or "?")
                pauses.append(
                    GeneratorPause(process, a - self.origin, b - self.origin, p["wall_s"], p["monotonic_s"])
                )
        return pauses

    @property
    def duration_s(self) -> float:
        return float(self.samples.t[-1] - self.samples.t[0]) if len(self.samples) else 0.0

    def to_pandas(self) -> pd.DataFrame:
        """The run's samples as a pandas DataFrame, one row per sample, for notebooks.

        Columns (times in seconds since the run origin, like the steps): ``time``, ``timestamp`` (UTC),
        ``step`` (index of the meta.json step the sample started in; <NA> outside every step),
        ``cut`` (True where the analysis leaves the sample out: a step's ramp and warm-up, and in the
        run's last step the seconds before the stop whose operations were still in flight; the cut of
        :func:`gateload.analysis.steady.steady_windows`, which :func:`gateload.analysis.metrics.analyze_run`
        uses), ``op`` (``"<type> <name>"``), ``type``, ``name``, ``duration_ms``, ``from_intended_ms``,
        ``t_intended``, ``success``, ``error``, ``server``, ``user``, ``user_count`` and, from the run's
        catalogue, ``paced``, ``is_aggregate`` (its ``aggregate``: a plain ``aggregate`` column would hide
        behind ``DataFrame.aggregate``) and ``role``. ``df[~df.cut].groupby("step")`` holds
        exactly the samples each step's statistics are computed from (groupby drops the <NA> steps).
        A step that never settles keeps its second half, as the report does (``steps_to_pandas()``
        says ``steady`` False).
        """
        return _samples_frame(self)

    def steps_to_pandas(self) -> pd.DataFrame:
        """The analysis's steady windows, one row per step it keeps: the step's ``start``/``end``,
        ``steady_start`` (the end of the warm-up cut), ``steady_end`` (the start of the stop cut, else
        ``end``), ``steady_s`` (the span throughput is divided by), ``users``, ``ramp_s``, ``warmup_s``,
        ``stop_cut_s``, ``steady`` and ``reached_users``; indexed by ``step``."""
        import pandas as pd

        from gateload.analysis.steady import steady_windows

        rows = [
            {
                "step": w.index,
                "users": w.users,
                "start": w.start,
                "end": w.end,
                "steady_start": w.steady_start,
                "steady_end": w.steady_end,
                "steady_s": w.duration,
                "ramp_s": w.ramp_s,
                "warmup_s": w.warmup_s,
                "stop_cut_s": w.stop_cut_s,
                "steady": w.steady,
                "reached_users": w.reached_users,
            }
            for w in steady_windows(self)
        ]
        return pd.DataFrame(rows).set_index("step")


def _is_number(x: Any) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# ----------------------------------------------------------------------------------------------- loading


def load_run(path: str | Path, *, allow_incomplete: bool = False) -> Run:
    """Load and validate one run folder (``meta.json`` + ``samples.parquet/``)."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise InputError(
            f"{run_dir}: no such run folder; pass a run folder (holding meta.json) or a label folder"
        )
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a folder; pass a run folder (holding meta.json) or a label folder")
    meta = _read_meta(run_dir)
    status = str(meta.get("status", "unknown"))
    complete = status == "completed" and meta.get("completed", True) is not False
    if not complete and not allow_incomplete:
        raise InputError(
            f"{run_dir}: the run is incomplete (status {status!r}); re-run it, or pass --allow-incomplete "
            "to analyse it anyway (every report then marks it INCOMPLETE)"
        )
    table = _read_parts(run_dir)
    expected = meta.get("sample_count")
    if complete and _is_number(expected) and table.num_rows < int(expected):
        raise InputError(
            f"{run_dir}: partial run: meta.json records {int(expected)} samples but the parts hold "
            f"{table.num_rows}; a part file is missing, restore it or re-run"
        )
    return run_from_table(run_dir, meta, table, complete=complete)


def run_from_table(run_dir: Path, meta: dict[str, Any], table: pa.Table, *, complete: bool = True) -> Run:
    """Build a :class:`Run` from its meta and an Arrow table of samples (used by load_run and tests)."""
    warnings: list[str] = []
    catalogue = catalogue_of(meta, f"{run_dir / META_FILE}: catalogue")
    samples, dropped = _to_samples(table, catalogue.aggregates)
    if dropped:
        warnings.append(f"{dropped} samples with a missing or negative start time or duration were dropped")
    if len(samples) == 0:
        raise InputError(f"{run_dir}: the run has no usable samples; it recorded nothing, re-run it")
    origin = float(meta["started_at"]) if _is_number(meta.get("started_at")) else float(samples.t[0])
    origin = min(origin, float(samples.t[0]))
    samples.t -= origin
    samples.t_intended -= origin
    if not complete:
        status = meta.get("status", "unknown")
        warnings.append(f"INCOMPLETE run (status {status!r}): used because incomplete runs were allowed")
    run = Run(
        path=run_dir,
        meta=meta,
        samples=samples,
        origin=origin,
        complete=complete,
        warnings=warnings,
        catalogue=catalogue,
    )
    _steps(run)  # validate the schedule now, so a bad one fails at load time
    return run


def _read_meta(run_dir: Path) -> dict[str, Any]:
    meta_path = run_dir / META_FILE
    if not meta_path.is_file():
        raise InputError(
            f"{run_dir}: {META_FILE} missing, so this is not a run folder; pass a run folder written by "
            "gateload (meta.json + samples.parquet/) or the label folder above it"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{meta_path}: not valid JSON ({exc}); the file is damaged, restore it or re-run"
        ) from None
    if not isinstance(meta, dict):
        raise InputError(f"{meta_path}: expected a JSON object at the top level; restore it or re-run")
    version = meta.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise InputError(
            f"{meta_path}: schema_version {version!r} is newer than this gateload reads ({SCHEMA_VERSION}); "
            "upgrade gateload"
        )
    for key in ("run_id", "status"):
        if key not in meta:
            raise InputError(
                f"{meta_path}: key {key!r} missing; the run was not written by gateload, re-run it"
            )
    return meta


def _read_parts(run_dir: Path) -> pa.Table:
    if not (run_dir / SAMPLES_DIR).is_dir():
        raise InputError(f"{run_dir}: {SAMPLES_DIR}/ missing; the run recorded no samples, re-run it")
    parts = part_files(run_dir)
    if not parts:
        raise InputError(
            f"{run_dir}: {SAMPLES_DIR}/ holds no part files; the run recorded no samples, re-run it"
        )
    tables = []
    for part in parts:
        try:
            names = set(pq.read_schema(part).names)
            missing = [c for c in READ_COLUMNS if c not in names]
            if missing:
                raise InputError(
                    f"{part}: column {missing[0]!r} missing; the part was not written with the gateload "
                    "results schema (analysis/schema.py), re-run with a matching gateload"
                )
            tables.append(pq.read_table(part, columns=list(READ_COLUMNS)))
        except (pa.ArrowException, OSError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"{part}: corrupt Parquet part ({reason}); move it aside to analyse the remaining parts, "
                "or re-run"
            ) from None
    table = pa.concat_tables(tables, promote_options="permissive")
    if table.num_rows == 0:
        raise InputError(f"{run_dir}: the run has no samples (every part is empty); re-run it")
    return table


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Integer codes (-1 for null) and labels of a string or dictionary column."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column.cast(pa.string()))
    arr = column.unify_dictionaries().combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    assert isinstance(arr, pa.DictionaryArray)  # dictionary-encoded above
    labels = [str(x) for x in arr.dictionary.to_pylist()]
    codes = _filled(arr.indices.cast(pa.int32()), -1)
    return codes.astype(np.int32, copy=False), labels


def _filled(column: pa.Array | pa.ChunkedArray, value: Any) -> np.ndarray:
    """The column as numpy, nulls replaced by ``value``."""
    filled: Any = pc.fill_null(column, value)  # pyarrow-stubs type fill_null's result as object
    return np.asarray(filled.to_numpy(zero_copy_only=False))


def _float(table: pa.Table, name: str) -> np.ndarray:
    return _filled(table.column(name).cast(pa.float64()), np.nan).astype(np.float64, copy=True)


def _to_samples(table: pa.Table, aggregates: frozenset[str] = frozenset()) -> tuple[Samples, int]:
    t = _float(table, "t_start")
    dur = _float(table, "duration_ms")
    keep = np.isfinite(t) & np.isfinite(dur) & (dur >= 0)
    dropped = int(len(t) - keep.sum())
    type_codes, type_labels = _codes(table.column("type"))
    name_codes, name_labels = _codes(table.column("name"))
    # One code per (type, name) pair: combine the two small code spaces, then compact.
    pair = (type_codes.astype(np.int64) + 1) * (len(name_labels) + 1) + (name_codes + 1)
    uniq, op = np.unique(pair, return_inverse=True)
    ops = []
    for key in uniq:
        ti, ni = divmod(int(key), len(name_labels) + 1)
        tname = type_labels[ti - 1] if ti > 0 else "?"
        nname = name_labels[ni - 1] if ni > 0 else "?"
        ops.append(f"{tname} {nname}")
    op_is_session = np.array([o in aggregates or o.split(" ", 1)[0] == SESSION_TYPE for o in ops], dtype=bool)
    error, errors = _codes(table.column("error"))
    server, servers = _codes(table.column("server"))
    worker, _ = _codes(table.column("worker"))
    uid = _filled(table.column("user_id").cast(pa.int64()), -1)
    user = np.where((uid >= 0) & (worker >= 0), (worker.astype(np.int64) << 32) | (uid & 0xFFFFFFFF), -1)
    user_count = _filled(table.column("user_count").cast(pa.int32()), 0).astype(np.int32)
    success = _filled(table.column("success"), False).astype(bool)

    order = np.argsort(np.where(keep, t, np.inf), kind="stable")[: int(keep.sum())]
    samples = Samples(
        t=t[order],
        dur=dur[order],
        t_intended=_float(table, "t_intended")[order],
        op=op.astype(np.int32)[order],
        ops=ops,
        op_is_session=op_is_session,
        success=success[order],
        error=error[order],
        errors=errors,
        server=server[order],
        servers=servers,
        user=user[order],
        user_count=user_count[order],
    )
    return samples, dropped


def _steps(run: Run) -> list[Step]:
    raw = run.meta.get("steps") or []
    where = f"{run.path / META_FILE}"
    if not isinstance(raw, list):
        raise InputError(f"{where}: 'steps' must be a list of step objects; fix or remove it")
    last_t = float(run.samples.t[-1]) if len(run.samples) else 0.0
    steps = []
    for i, s in enumerate(raw):
        if not isinstance(s, dict):
            raise InputError(f"{where}: steps[{i}] must be an object with start, end, users; fix it")
        for key in ("start", "users"):
            if not _is_number(s.get(key)):
                raise InputError(f"{where}: steps[{i}].{key} must be a number, got {s.get(key)!r}; fix it")
        end = s.get("end")
        end_t = float(end) - run.origin if _is_number(end) else last_t  # an interrupted last step has no end
        rate = s.get("spawn_rate")
        spawned = s.get("spawned")
        steps.append(
            Step(
                index=int(s["index"]) if _is_number(s.get("index")) else i,
                start=float(s["start"]) - run.origin,
                end=end_t,
                users=int(s["users"]),
                spawn_rate=float(rate) if _is_number(rate) else 0.0,
                spawned=float(spawned) - run.origin if _is_number(spawned) else None,
            )
        )
    return sorted((s for s in steps if s.end > s.start), key=lambda s: s.start)


# ------------------------------------------------------------------------------------------- pandas


def _categorical(codes: np.ndarray, labels: list[str]) -> pd.Categorical[str]:
    """A pandas categorical straight from the numpy codes (-1 = missing), without building strings."""
    import pandas as pd

    uniq = list(dict.fromkeys(labels))
    if len(uniq) != len(labels):  # duplicate labels (not expected): remap the codes onto unique ones
        remap = np.array([uniq.index(x) for x in labels] + [-1], dtype=np.int32)
        codes = remap[codes]  # index -1 picks the trailing -1
    return pd.Categorical.from_codes(codes, categories=pd.Index(uniq))


def _step_codes(run: Run) -> np.ndarray:
    """Index of the meta.json step each sample started in (half-open ``[start, end)``), -1 outside all.

    A run without a schedule is the analysis's one window (index 0) from its first to its last sample.
    """
    t = run.samples.t
    steps = run.steps
    if not steps:
        return np.zeros(len(t), dtype=np.int64)
    starts = np.array([st.start for st in steps])
    ends = np.array([st.end for st in steps])
    pos = np.searchsorted(starts, t, side="right") - 1
    inside = (pos >= 0) & (t < ends[np.maximum(pos, 0)])
    index = np.array([st.index for st in steps], dtype=np.int64)
    return np.where(inside, index[np.maximum(pos, 0)], -1)


def _cut(run: Run, step: np.ndarray) -> np.ndarray:
    """True where analyze_run leaves a sample of a step out: its ramp/warm-up, or the stop cut.

    The cut is :func:`gateload.analysis.steady.steady_windows` itself. Operations count from a step's
    steady start to its steady end; aggregates (SESSION rows) over the whole step, ramp included
    (metrics._session_ops); a step the analysis drops (no sample in its steady part) is cut whole.
    """
    from gateload.analysis.steady import steady_windows

    s = run.samples
    windows = {w.index: w for w in steady_windows(run)}
    aggregate = s.op_is_session[s.op]
    cut = np.zeros(len(s), dtype=bool)
    for index in np.unique(step[step >= 0]).tolist():
        rows = step == index
        w = windows.get(int(index))
        if w is None:
            cut[rows] = True
        else:
            t = s.t[rows]
            cut[rows] = ((t < w.steady_start) | (t >= w.steady_end)) & ~aggregate[rows]
    return cut


def _roles(run: Run) -> list[str]:
    """Per op code: the analysis roles the catalogue gives it ("logon", "echo", ...), "+"-joined."""
    from gateload.analysis.catalogue import ROLES

    holders = {role: run.catalogue.role(role) for role in ROLES}
    return ["+".join(r for r in ROLES if holders[r] == op) for op in run.samples.ops]


def _samples_frame(run: Run) -> pd.DataFrame:
    import pandas as pd

    from gateload.analysis.health import corrected_latency

    s = run.samples
    step = _step_codes(run)
    types = [o.split(" ", 1)[0] for o in s.ops]
    names = [o.split(" ", 1)[1] if " " in o else "" for o in s.ops]
    paced_ops = {o.key for o in run.catalogue.paced} | set(run.paced)
    op_paced = np.array([o in paced_ops for o in s.ops], dtype=bool)
    roles = _roles(run)
    role_labels = sorted(set(roles) - {""})
    role_codes = np.array([role_labels.index(r) if r else -1 for r in roles], dtype=np.int32)
    type_labels = list(dict.fromkeys(types))
    name_labels = list(dict.fromkeys(names))
    type_codes = np.array([type_labels.index(x) for x in types], dtype=np.int32)
    name_codes = np.array([name_labels.index(x) for x in names], dtype=np.int32)
    # integer nanoseconds: origin + t as one float would lose ~0.2 us at epoch magnitudes
    ns = np.int64(round(run.origin * 1e9)) + np.round(s.t * 1e9).astype(np.int64)
    timestamp = pd.to_datetime(ns, unit="ns", utc=True)
    return pd.DataFrame(
        {
            "time": s.t,
            "timestamp": timestamp,
            "step": pd.arrays.IntegerArray(np.maximum(step, 0), step < 0),
            "cut": _cut(run, step),
            "op": _categorical(s.op, s.ops),
            "type": _categorical(type_codes[s.op], type_labels),
            "name": _categorical(name_codes[s.op], name_labels),
            "duration_ms": s.dur,
            # latency from the intended start of a paced operation (coordinated omission), else the raw one
            "from_intended_ms": corrected_latency(s.t, s.dur, s.t_intended),
            "t_intended": s.t_intended,
            "success": s.success,
            "error": _categorical(s.error, s.errors),
            "server": _categorical(s.server, s.servers),
            "user": pd.arrays.IntegerArray(np.maximum(s.user, 0), s.user < 0),
            "user_count": s.user_count,
            "paced": op_paced[s.op],
            "is_aggregate": s.op_is_session[s.op],
            "role": _categorical(role_codes[s.op], role_labels),
        }
    )


# ----------------------------------------------------------------------------------------- many runs


def is_run_dir(path: Path) -> bool:
    return (path / META_FILE).is_file()


def expand_run_dirs(path: str | Path) -> list[Path]:
    """The run folders named by ``path``: a run folder, a label folder of replicates, or a results folder
    of label folders (``<results>/<label>/<run-id>/``)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such folder; pass a run folder or a label folder of runs")
    if not p.is_dir():
        raise InputError(f"{p}: not a folder; pass a run folder or a label folder of runs")
    if is_run_dir(p):
        return [p]
    runs = sorted(c for c in p.iterdir() if c.is_dir() and is_run_dir(c))
    if runs:
        return runs
    runs = sorted(g for c in p.iterdir() if c.is_dir() for g in c.iterdir() if g.is_dir() and is_run_dir(g))
    if runs:
        return runs
    if (p / SAMPLES_DIR).exists():
        _read_meta(p)  # raises the precise "meta.json missing" message
    raise InputError(
        f"{p}: holds no run folders (none has a meta.json); pass a run folder or a label folder of runs"
    )


def load_runs(paths: Iterable[str | Path], *, allow_incomplete: bool = False) -> list[Run]:
    """Load every run named by ``paths`` (run, label or results folders), without duplicates."""
    seen: set[Path] = set()
    runs = []
    for p in paths:
        for d in expand_run_dirs(p):
            key = d.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(load_run(d, allow_incomplete=allow_incomplete))
    if not runs:
        raise InputError("no runs given; pass at least one run folder or label folder")
    return runs


def group_by_label(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs grouped by label, in first-seen order: runs that share a label are replicates."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    return groups
