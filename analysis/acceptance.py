"""Acceptance files: margins declared before the run, loaded strictly from TOML.

Every key is optional except that a criterion needs its inputs (``logon.max_p95_ms`` and ``[sla]``
need ``load.reference_users``). An unknown key, a wrong type or an out-of-range value is an
:class:`InputError` naming the file, the key and the fix. See ``targets/acceptance/example.toml`` for a
commented file with every key.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateload.analysis.catalogue import LEGACY
from gateload.errors import InputError

# Sample types are a protocol's own (its catalogue declares them): any capitalised word; these are
# the ones gateload's users record today, named in the error message.
OP_TYPES = LEGACY.types
_OP_TYPE = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class Acceptance:
    path: Path | None = None
    confidence: float = 0.95  # two-sided interval level
    noise: float = 0.02  # relative change treated as noise when describing a change
    reference_users: float | None = None  # the load at which latency, SLA and errors are judged
    reference_tolerance: float = 0.25  # nearest step within this relative distance counts
    min_peak_gain: float | None = None  # compare: peak throughput after / before
    min_scaling_efficiency: float | None = None  # compare: observed gain / gain expected from servers
    min_ops_per_s: float | None = None  # check: throughput at the reference load
    max_logon_p95_ms: float | None = None
    max_error_rate: float | None = None
    min_share_of_even: float | None = None  # each (new) server's share / (1 / servers)
    sla: dict[str, float] = field(default_factory=dict)  # op -> p95 limit (ms) at the reference load
    max_latency_ratio: dict[str, float] = field(default_factory=dict)  # op -> p95 after / before
    max_paced_shortfall: float = 0.10
    max_littles_law_error: float = 0.25

    @property
    def name(self) -> str:
        return str(self.path) if self.path else "built-in defaults"

    def sla_limits(self, logon: str | None = LEGACY.logon) -> dict[str, float]:
        """Per-operation p95 limits, with the logon limit as the SLA of ``logon`` (the runs' logon op)."""
        limits = dict(self.sla)
        if self.max_logon_p95_ms is not None and logon:
            limits.setdefault(logon, self.max_logon_p95_ms)
        return limits


# (table, key) -> (Acceptance field, kind of number, hint shown in errors)
_Number = tuple[str, str, str]
_SCALARS: dict[tuple[str, str], _Number] = {
    ("", "confidence"): ("confidence", "fraction_open", "e.g. confidence = 0.95"),
    ("", "noise"): ("noise", "fraction", "e.g. noise = 0.02"),
    ("load", "reference_users"): ("reference_users", "positive", "e.g. reference_users = 100"),
    ("load", "reference_tolerance"): ("reference_tolerance", "fraction", "e.g. reference_tolerance = 0.25"),
    ("throughput", "min_peak_gain"): ("min_peak_gain", "positive", "e.g. min_peak_gain = 2.0"),
    ("throughput", "min_scaling_efficiency"): (
        "min_scaling_efficiency",
        "positive",
        "e.g. min_scaling_efficiency = 0.6",
    ),
    ("throughput", "min_ops_per_s"): ("min_ops_per_s", "positive", "e.g. min_ops_per_s = 150"),
    ("logon", "max_p95_ms"): ("max_logon_p95_ms", "positive", "e.g. max_p95_ms = 1500"),
    ("errors", "max_rate"): ("max_error_rate", "fraction", "e.g. max_rate = 0.01 (1 %)"),
    ("servers", "min_share_of_even"): ("min_share_of_even", "fraction", "e.g. min_share_of_even = 0.5"),
    ("health", "max_paced_shortfall"): ("max_paced_shortfall", "fraction", "e.g. max_paced_shortfall = 0.1"),
    ("health", "max_littles_law_error"): (
        "max_littles_law_error",
        "positive",
        "e.g. max_littles_law_error = 0.25",
    ),
}
_OP_TABLES = {
    "sla": ("sla", "p95 limit in ms", '"SSH keystroke" = 200'),
    "latency_ratio": ("max_latency_ratio", "max p95 ratio after/before", '"SSH keystroke" = 1.0'),
}
_TABLES = {"load", "throughput", "logon", "errors", "servers", "health", *_OP_TABLES}
_TOP = {"version", "confidence", "noise", *_TABLES}


def load_acceptance(path: str | Path) -> Acceptance:
    """Load and validate an acceptance TOML file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(
            f"{p}: acceptance file not found; pass --acceptance with a TOML file such as "
            "targets/acceptance/reference.toml"
        )
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: not valid TOML ({exc}); fix the syntax there") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read it ({exc}); pass a UTF-8 TOML file") from None
    return parse_acceptance(data, p)


def parse_acceptance(data: dict[str, Any], path: Path | None = None) -> Acceptance:
    """Validate acceptance data already parsed from TOML."""
    where = str(path) if path else "acceptance"
    values: dict[str, Any] = {"path": path}
    for key in data:
        if key not in _TOP:
            raise InputError(
                f"{where}: unknown key {key!r}{_suggest(key, _TOP)}; remove it or fix its spelling"
            )
    version = data.get("version", 1)
    if version != 1 or isinstance(version, bool):
        raise InputError(f"{where}: key 'version' must be 1 (the only acceptance format), got {version!r}")
    for key in ("confidence", "noise"):
        if key in data:
            values[_SCALARS[("", key)][0]] = _number(where, "", key, data[key])
    for table in _TABLES:
        if table not in data:
            continue
        content = data[table]
        if not isinstance(content, dict):
            raise InputError(f"{where}: {table!r} must be a table ([{table}]), got {type(content).__name__}")
        if table in _OP_TABLES:
            field_name, what, example = _OP_TABLES[table]
            values[field_name] = _op_table(where, table, content, what, example)
            continue
        known = {k for (t, k) in _SCALARS if t == table}
        for key, value in content.items():
            if key not in known:
                raise InputError(
                    f"{where}: unknown key '{table}.{key}'{_suggest(key, known)}; known keys in [{table}]: "
                    f"{', '.join(sorted(known))}"
                )
            values[_SCALARS[(table, key)][0]] = _number(where, table, key, value)
    acc = Acceptance(**values)
    if acc.reference_users is None and (acc.sla or acc.max_logon_p95_ms is not None or acc.max_latency_ratio):
        raise InputError(
            f"{where}: latency criteria are judged at a reference load, but 'load.reference_users' is "
            "missing; "
            "add [load] reference_users = <sessions>"
        )
    if acc.reference_users is None and acc.min_ops_per_s is not None:
        raise InputError(
            f"{where}: 'throughput.min_ops_per_s' needs 'load.reference_users'; add it to [load]"
        )
    return acc


def _suggest(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _number(where: str, table: str, key: str, value: Any) -> float:
    _, kind, hint = _SCALARS[(table, key)]
    name = f"{table}.{key}" if table else key
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{where}: key '{name}' must be a number, got {value!r}; {hint}")
    v = float(value)
    if kind == "positive" and v <= 0:
        raise InputError(f"{where}: key '{name}' must be > 0, got {value!r}; {hint}")
    if kind == "fraction" and not 0 <= v <= 1:
        raise InputError(f"{where}: key '{name}' must be between 0 and 1, got {value!r}; {hint}")
    if kind == "fraction_open" and not 0 < v < 1:
        raise InputError(f"{where}: key '{name}' must be strictly between 0 and 1, got {value!r}; {hint}")
    return v


def _op_table(where: str, table: str, content: dict[str, Any], what: str, example: str) -> dict[str, float]:
    out = {}
    for op, value in content.items():
        kind = op.split(" ", 1)[0]
        if op != "ALL" and (not _OP_TYPE.fullmatch(kind) or " " not in op):
            raise InputError(
                f'{where}: [{table}] key {op!r} is not an operation; use "<TYPE> <name>" with TYPE a '
                f'protocol\'s sample type such as {", ".join(OP_TYPES)} (or "ALL"), e.g. {example}'
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise InputError(
                f"{where}: [{table}] {op!r} must be a positive number ({what}), got {value!r}; e.g. {example}"
            )
        out[op] = float(value)
    return out
