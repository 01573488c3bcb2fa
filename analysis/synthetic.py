"""Synthetic runs whose truth is known, for tests and the benchmark.

The model, per load step with ``N`` users:

- Non-paced operations arrive at ``X(N)``, the Universal Scalability Law with the spec's
  ``(lambda, sigma, kappa)``, modulated by a slow AR(1) on the log rate (so throughput is autocorrelated).
- Their latency is lognormal around ``median_ms * latency_scale * f(N)``, where ``f(N)`` follows from
  Little's law ``R(N) = N / X(N) - Z`` (so it rises past the knee), times an AR(1) component on the log
  scale (autocorrelation in time) and a warm-up transient at the start of every step.
- SSH keystrokes (``keystroke_op``) are paced at ``paced_rate`` per user with an intended start; a
  ``stall`` holds every operation in flight, and paced users catch up back to back afterwards
  (coordinated omission).
- SESSION rows (``logon_op``, ``session_op``): one logon and one session per ``session_s`` per user.

Operation names are the spec's, and meta.json carries the spec's ``catalogue`` (None: none, as in runs
written before the key), so a protocol other than SSH runs through the analysis unchanged.

The stationary distribution is known in closed form: see :func:`truth_quantile`, :func:`truth_throughput`.
Runs are written through :func:`gateload.analysis.schema.write_part` /
:func:`gateload.analysis.schema.write_meta`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.signal import lfilter
from scipy.special import ndtri

from gateload.analysis.catalogue import LEGACY, Catalogue
from gateload.analysis.runs import Run, run_from_table
from gateload.analysis.schema import SAMPLE_SCHEMA, write_meta, write_part

DT = 0.05  # arrival grid (s)


@dataclass(frozen=True)
class OpSpec:
    type: str
    name: str
    weight: float  # share of the non-paced mix
    median_ms: float  # median latency at f(N) = 1
    sigma: float = 0.4  # lognormal shape of the independent part
    served: bool = True  # carried by a gateway server (False: the portal, server unknown)
    error: str = "reset"

    @property
    def key(self) -> str:
        return f"{self.type} {self.name}"


DEFAULT_MIX = (
    OpSpec("HTTP", "GET /login", 1.0, 6.0, served=False, error="http_503"),
    OpSpec("HTTP", "POST /login", 1.0, 20.0, served=False, error="http_503"),
    OpSpec("HTTP", "GET /api/apps", 1.0, 8.0, served=False, error="http_503"),
    OpSpec("HTTP", "POST /api/launch", 1.0, 12.0, served=False, error="http_503"),
    OpSpec("SSH", "connect", 1.0, 40.0, error="timeout"),
    OpSpec("SSH", "screen_update", 4.0, 15.0),
    OpSpec("SSH", "exec", 2.0, 20.0),
    OpSpec("SFTP", "get", 1.0, 50.0, error="sftp_error"),
    OpSpec("SFTP", "put", 0.5, 60.0, error="sftp_error"),
    OpSpec("TUNNEL", "http", 1.0, 15.0, error="tunnel_refused"),
)
KEYSTROKE = LEGACY.echo or "SSH keystroke"


@dataclass(frozen=True)
class SynthSpec:
    label: str = "before"
    run_id: str = "run-1"
    steps: tuple[tuple[int, float], ...] = ((5, 30.0), (10, 30.0), (20, 30.0), (40, 30.0))
    ramp_s: float = 3.0
    usl: tuple[float, float, float] = (20.0, 0.02, 0.0005)  # X(N) of the non-paced mix, ops/s
    closed_loop: bool = False  # users loop operation -> think; else Poisson arrivals (exact latency truth)
    generator_lag_s: float = 0.0  # closed loop: undeclared delay added to every think pause
    latency_scale: float = 1.0  # multiplies every latency (the "shift" of a comparison)
    load_latency: bool = True  # latency grows with N as Little's law implies
    ops: tuple[OpSpec, ...] = DEFAULT_MIX
    ar_sd: float = 0.15  # stationary sd of the AR(1) log-latency component
    ar_tau_s: float = 1.0  # its correlation time
    rate_sd: float = 0.1  # sd of the AR(1) log modulation of the arrival rate (closed loop: of the pauses)
    warmup_s: float = 3.0  # transient at the start of each step...
    warmup_factor: float = 2.0  # ...starting at this multiple of the steady latency
    trend_per_s: float = 0.0  # log-latency drift per second (a run that never settles)
    servers: tuple[str, ...] = ("old-01", "old-02", "old-03", "old-04")
    server_weights: tuple[float, ...] | None = None
    error_rate: float = 0.002
    paced_rate: float = 4.0  # keystrokes per user per second (0: none)
    keystroke_op: str = KEYSTROKE  # the paced operation's "<type> <name>"
    logon_op: str = LEGACY.logon or "SESSION logon"
    session_op: str = LEGACY.role("session") or "SESSION session"
    catalogue: Catalogue | None = LEGACY  # written to meta.json; None: an old run without one
    keystroke_ms: float = 6.0
    stall: tuple[float, float] | None = None  # (start s after the run start, duration s)
    session_s: float = 30.0
    logon_ms: float = 300.0
    status: str = "completed"
    cpu_warnings: int = 0
    record_think_time: bool | None = None  # None: closed-loop runs without paced operations
    seed: int = 0
    start_epoch: float = 1.7e9
    extra_meta: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> SynthSpec:
        return replace(self, **changes)


# ------------------------------------------------------------------------------------------ truth


def usl_x(spec: SynthSpec, n: float) -> float:
    lam, sigma, kappa = spec.usl
    return lam * n / (1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0))


def _mix_mean_ms(spec: SynthSpec) -> float:
    w = np.array([o.weight for o in spec.ops])
    m = np.array([o.median_ms * math.exp((o.sigma**2 + spec.ar_sd**2) / 2.0) for o in spec.ops])
    return float((w * m).sum() / w.sum())


def think_time_s(spec: SynthSpec) -> float:
    """Z such that Little's law holds at N = 1 with unit load factor (must be positive)."""
    return max(1.0 / usl_x(spec, 1.0) - _mix_mean_ms(spec) / 1000.0, 0.0)


def load_factor(spec: SynthSpec, n: float) -> float:
    """f(N) = R(N) / R(1) with R(N) = N / X(N) - Z: latency rises as throughput saturates."""
    if not spec.load_latency or n <= 0:
        return 1.0
    z = think_time_s(spec)
    r1 = _mix_mean_ms(spec) / 1000.0
    return max((n / usl_x(spec, n) - z) / r1, 1e-3)


def truth_quantile(spec: SynthSpec, op: str, users: float, q: float) -> float:
    """Steady-state quantile (ms) of an operation's latency at ``users``."""
    if op == spec.keystroke_op:
        med, sig = spec.keystroke_ms, 0.3
    elif op == spec.logon_op:
        med, sig = spec.logon_ms, 0.3
    else:
        o = next(o for o in spec.ops if o.key == op)
        med, sig = o.median_ms, o.sigma
    scale = med * spec.latency_scale * load_factor(spec, users)
    return scale * math.exp(ndtri(q) * math.sqrt(sig**2 + spec.ar_sd**2))


def truth_throughput(spec: SynthSpec, users: float) -> float:
    """Expected successful non-SESSION operations per second at ``users`` in steady state."""
    paced = users * spec.paced_rate
    return (usl_x(spec, users) + paced) * (1.0 - spec.error_rate)


def truth_peak_throughput(spec: SynthSpec) -> float:
    return max(truth_throughput(spec, n) for n, _ in spec.steps)


# ------------------------------------------------------------------------------------- generation


def _ar1(rng: np.random.Generator, n: int, sd: float, tau_s: float) -> np.ndarray:
    if sd <= 0 or n == 0:
        return np.zeros(n)
    phi = math.exp(-DT / tau_s)
    e = rng.normal(0.0, sd * math.sqrt(1.0 - phi * phi), n)
    x = lfilter([1.0], [1.0, -phi], e)
    x[0] = rng.normal(0.0, sd)  # start in the stationary distribution
    x[1:] += x[0] * phi ** np.arange(1, n)
    return x


@dataclass
class _Cols:
    t: list[np.ndarray] = field(default_factory=list)
    ti: list[np.ndarray] = field(default_factory=list)
    dur: list[np.ndarray] = field(default_factory=list)
    op: list[np.ndarray] = field(default_factory=list)
    ok: list[np.ndarray] = field(default_factory=list)
    err: list[np.ndarray] = field(default_factory=list)
    user: list[np.ndarray] = field(default_factory=list)
    users: list[np.ndarray] = field(default_factory=list)
    server: list[np.ndarray] = field(default_factory=list)

    def add(self, **cols: np.ndarray) -> None:
        for k, v in cols.items():
            getattr(self, k).append(v)

    def cat(self, name: str) -> np.ndarray:
        return np.concatenate(getattr(self, name))


def _schedule(spec: SynthSpec) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Grid times, users at each grid time, and the meta step list (epoch seconds)."""
    grid, users, steps = [], [], []
    t0 = 0.0
    prev = 0
    for i, (n, dur) in enumerate(spec.steps):
        g = t0 + np.arange(0.0, dur, DT)
        ramp = np.clip((g - t0) / spec.ramp_s, 0.0, 1.0) if spec.ramp_s > 0 else np.ones(len(g))
        grid.append(g)
        users.append(prev + (n - prev) * ramp)
        rate = abs(n - prev) / spec.ramp_s if spec.ramp_s > 0 else 0.0
        steps.append(
            {
                "index": i,
                "start": spec.start_epoch + t0,
                "end": spec.start_epoch + t0 + dur,
                "users": n,
                "spawn_rate": rate,
            }
        )
        t0 += dur
        prev = n
    return np.concatenate(grid), np.concatenate(users), steps


def _step_age(spec: SynthSpec, t: np.ndarray) -> np.ndarray:
    starts = np.cumsum([0.0] + [d for _, d in spec.steps])[:-1]
    i = np.searchsorted(starts, t, side="right") - 1
    return t - starts[i]


def _latency_mult(spec: SynthSpec, t: np.ndarray, n: np.ndarray, g: np.ndarray) -> np.ndarray:
    f = np.array([load_factor(spec, x) for x in np.unique(n)])
    lf = np.interp(n, np.unique(n), f) if len(f) > 1 else np.full(len(n), f[0] if len(f) else 1.0)
    warm: float | np.ndarray = 1.0
    if spec.warmup_s > 0 and spec.warmup_factor != 1.0:
        warm = 1.0 + (spec.warmup_factor - 1.0) * np.exp(-_step_age(spec, t) / (spec.warmup_s / 3.0))
    return spec.latency_scale * lf * warm * np.exp(g + spec.trend_per_s * t)


def build_table(spec: SynthSpec) -> tuple[pa.Table, dict[str, Any]]:
    """Samples (an Arrow table in the results schema) and meta.json content of a synthetic run."""
    rng = np.random.default_rng(spec.seed)
    grid, users, steps = _schedule(spec)
    g_lat = _ar1(rng, len(grid), spec.ar_sd, spec.ar_tau_s)
    g_rate = _ar1(rng, len(grid), spec.rate_sd, spec.ar_tau_s)
    n_servers = len(spec.servers)
    sw = np.asarray(spec.server_weights or [1.0] * n_servers, dtype=float)
    sw = sw / sw.sum()
    op_names = [o.key for o in spec.ops] + [spec.keystroke_op, spec.logon_op, spec.session_op]
    errors = sorted({o.error for o in spec.ops} | {"timeout"})
    cols = _Cols()

    if spec.closed_loop:
        _closed_loop(spec, rng, grid, users, g_lat, g_rate, errors, sw, cols)
    else:
        _open_loop(spec, rng, grid, users, g_lat, g_rate, errors, sw, cols)
    if spec.paced_rate > 0:
        _keystrokes(spec, rng, grid, users, g_lat, op_names.index(spec.keystroke_op), sw, cols)
    _sessions(spec, rng, grid, users, g_lat, op_names, sw, cols)

    t_all = cols.cat("t")
    order = np.argsort(t_all, kind="stable")
    n = len(order)

    def dict_col(codes: np.ndarray, labels: list[str]) -> pa.DictionaryArray:
        codes = codes[order].astype(np.int16)
        return pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), pa.array(labels, pa.string()))

    opc = cols.cat("op")
    types = sorted({o.split(" ", 1)[0] for o in op_names})
    names = sorted({o.split(" ", 1)[1] for o in op_names})
    type_codes = np.array([types.index(o.split(" ", 1)[0]) for o in op_names])[opc]
    name_codes = np.array([names.index(o.split(" ", 1)[1]) for o in op_names])[opc]
    user = cols.cat("user")
    worker = (user % 2).astype(np.int16)
    table = pa.Table.from_arrays(
        [
            pa.array(spec.start_epoch + t_all[order]),
            pa.array(spec.start_epoch + cols.cat("ti")[order]),
            pa.array(cols.cat("dur")[order]),
            dict_col(type_codes, types),
            dict_col(name_codes, names),
            pa.array(cols.cat("ok")[order]),
            dict_col(cols.cat("err"), errors),
            pa.array(np.full(n, 512, dtype=np.int64)),
            dict_col(worker, ["synth:1", "synth:2"]),
            pa.array(user[order].astype(np.int32)),
            pa.array(cols.cat("users")[order].astype(np.int32)),
            dict_col(cols.cat("server"), list(spec.servers)),
        ],
        schema=SAMPLE_SCHEMA,
    )
    total = float(sum(d for _, d in spec.steps))
    failures = int(n - table.column("success").to_numpy(zero_copy_only=False).sum())
    meta = {
        "schema_version": 1,
        "run_id": spec.run_id,
        "label": spec.label,
        "status": spec.status,
        "completed": spec.status == "completed",
        "started_at": spec.start_epoch,
        "ended_at": spec.start_epoch + total if spec.status == "completed" else None,
        "profile": {
            "path": "synthetic",
            "name": f"synthetic-{spec.label}",
            "sha256": "",
            "servers": list(spec.servers),
        },
        "shape": {"name": "step", "params": {"steps": [list(s) for s in spec.steps], "ramp_s": spec.ramp_s}},
        "steps": steps,
        "paced": {spec.keystroke_op: spec.paced_rate} if spec.paced_rate > 0 else {},
        "think_time_s": think_time_s(spec) if _records_think(spec) else None,
        "args": {"synthetic": True, "seed": spec.seed},
        "versions": {},
        "git_revision": None,
        "host": "synthetic",
        "processes": 1,
        "sample_count": n,
        "locust": {"requests": n, "failures": failures, "cpu_warnings": spec.cpu_warnings},
        "security": {"host_key_verified": True, "tls_verified": True},
        **({"catalogue": spec.catalogue.to_json()} if spec.catalogue is not None else {}),
        **spec.extra_meta,
    }
    return table, meta


def _op_arrays(spec: SynthSpec, errors: list[str]) -> dict[str, np.ndarray]:
    w = np.array([o.weight for o in spec.ops])
    return {
        "p": w / w.sum(),
        "med": np.array([o.median_ms for o in spec.ops]),
        "sig": np.array([o.sigma for o in spec.ops]),
        "err": np.array([errors.index(o.error) for o in spec.ops]),
        "served": np.array([o.served for o in spec.ops]),
    }


def _stalled(spec: SynthSpec, t: np.ndarray, dur_ms: np.ndarray) -> np.ndarray:
    """An operation in flight at the stall, or started inside it, completes when the stall ends."""
    if not spec.stall:
        return dur_ms
    s0, s1 = spec.stall[0], spec.stall[0] + spec.stall[1]
    hit = (t < s1) & (t + dur_ms / 1000.0 > s0)
    return np.where(hit, (np.maximum(s1, t) - t) * 1000.0 + dur_ms, dur_ms)


def _open_loop(
    spec: SynthSpec,
    rng: np.random.Generator,
    grid: np.ndarray,
    users: np.ndarray,
    g_lat: np.ndarray,
    g_rate: np.ndarray,
    errors: list[str],
    sw: np.ndarray,
    cols: _Cols,
) -> None:
    """Non-paced operations as Poisson arrivals at the USL rate (random user ids; exact latency truth)."""
    oa = _op_arrays(spec, errors)
    x = np.array([usl_x(spec, n) if n > 0 else 0.0 for n in users])
    lam = x * np.exp(g_rate - spec.rate_sd**2 / 2.0) * DT
    if spec.stall:
        lam[(grid >= spec.stall[0]) & (grid < spec.stall[0] + spec.stall[1])] = 0.0  # users are blocked
    cell = np.repeat(np.arange(len(grid)), rng.poisson(lam))
    t = grid[cell] + rng.uniform(0.0, DT, len(cell))
    which = rng.choice(len(spec.ops), size=len(cell), p=oa["p"])
    mult = _latency_mult(spec, t, users[cell], g_lat[cell])
    dur = _stalled(
        spec, t, oa["med"][which] * np.exp(oa["sig"][which] * rng.standard_normal(len(cell))) * mult
    )
    ok = rng.random(len(cell)) >= spec.error_rate
    n_servers = len(spec.servers)
    server = rng.choice(n_servers, size=len(cell), p=sw) if n_servers else np.full(len(cell), -1)
    ucount = np.maximum(np.round(users[cell]), 1)
    cols.add(
        t=t,
        ti=np.full(len(cell), np.nan),
        dur=dur,
        op=which,
        ok=ok,
        err=np.where(ok, -1, oa["err"][which]),
        user=(rng.random(len(cell)) * ucount).astype(np.int64),
        users=ucount,
        server=np.where(oa["served"][which], server, -1),
    )


def _sticky_servers(n_users: int, sw: np.ndarray) -> np.ndarray:
    """Smooth weighted round robin: the backend each user's session is balanced to."""
    if len(sw) == 0:
        return np.full(n_users, -1)
    current = np.zeros(len(sw))
    out = np.empty(n_users, dtype=np.int64)
    for u in range(n_users):
        current += sw
        k = int(np.argmax(current))
        current[k] -= 1.0
        out[u] = k
    return out


def _closed_loop(
    spec: SynthSpec,
    rng: np.random.Generator,
    grid: np.ndarray,
    users: np.ndarray,
    g_lat: np.ndarray,
    g_rate: np.ndarray,
    errors: list[str],
    sw: np.ndarray,
    cols: _Cols,
) -> None:
    """Non-paced operations by closed-loop users: operation, think pause (uniform 0.5-1.5 Z), repeat.

    Throughput then follows from Little's law, X = N / (R(N) + Z) = USL(N). ``generator_lag_s`` is
    added to every pause without being declared (a generator that wakes its users late).
    """
    oa = _op_arrays(spec, errors)
    end = float(grid[-1] + DT)
    n_max = int(max(n for n, _ in spec.steps))
    spawn = np.array(
        [grid[np.argmax(users >= u + 1)] if np.any(users >= u + 1) else end for u in range(n_max)]
    )
    z = think_time_s(spec)
    t_next = spawn + rng.uniform(0.0, max(z, 0.01), n_max)
    server_of = _sticky_servers(n_max, sw)
    chunks: list[tuple[np.ndarray, ...]] = []
    while True:
        idx = np.flatnonzero(t_next < end)
        if len(idx) == 0:
            break
        t = t_next[idx]
        cell = np.minimum((t / DT).astype(np.int64), len(grid) - 1)
        which = rng.choice(len(spec.ops), size=len(idx), p=oa["p"])
        mult = _latency_mult(spec, t, users[cell], g_lat[cell])
        dur = _stalled(
            spec, t, oa["med"][which] * np.exp(oa["sig"][which] * rng.standard_normal(len(idx))) * mult
        )
        pause = z * rng.uniform(0.5, 1.5, len(idx)) * np.exp(g_rate[cell] - spec.rate_sd**2 / 2.0)
        t_next[idx] = t + dur / 1000.0 + pause + spec.generator_lag_s
        chunks.append((t, dur, which, idx, cell))
    t, dur, which, user, cell = (np.concatenate(c) for c in zip(*chunks, strict=True))
    ok = rng.random(len(t)) >= spec.error_rate
    cols.add(
        t=t,
        ti=np.full(len(t), np.nan),
        dur=dur,
        op=which,
        ok=ok,
        err=np.where(ok, -1, oa["err"][which]),
        user=user.astype(np.int64),
        users=np.maximum(np.round(users[cell]), 1),
        server=np.where(oa["served"][which], server_of[user], -1),
    )


def _records_think(spec: SynthSpec) -> bool:
    if spec.record_think_time is None:
        return spec.closed_loop and spec.paced_rate == 0
    return spec.record_think_time


def _keystrokes(
    spec: SynthSpec,
    rng: np.random.Generator,
    grid: np.ndarray,
    users: np.ndarray,
    g_lat: np.ndarray,
    code: int,
    sw: np.ndarray,
    cols: _Cols,
) -> None:
    """Paced keystrokes: each user types at ``paced_rate`` from its spawn to the end of the run."""
    end = float(grid[-1] + DT)
    n_max = int(max(n for n, _ in spec.steps))
    spawn = np.array(
        [grid[np.argmax(users >= u + 1)] if np.any(users >= u + 1) else end for u in range(n_max)]
    )
    interval = 1.0 / spec.paced_rate
    n_servers = len(spec.servers)
    for u in range(n_max):
        intended = spawn[u] + rng.uniform(0, interval) + np.arange(0.0, max(end - spawn[u], 0.0), interval)
        intended = intended[intended < end]
        if len(intended) == 0:
            continue
        cell = np.minimum((intended / DT).astype(np.int64), len(grid) - 1)
        base = spec.keystroke_ms * np.exp(0.3 * rng.standard_normal(len(intended)))
        base *= _latency_mult(spec, intended, users[cell], g_lat[cell])
        start, dur = _pace(intended, base, spec.stall)
        keep = start < end
        k = int(keep.sum())
        cols.add(
            t=start[keep],
            ti=intended[keep],
            dur=dur[keep],
            op=np.full(k, code),
            ok=np.ones(k, bool),
            err=np.full(k, -1),
            user=np.full(k, u, dtype=np.int64),
            users=np.maximum(np.round(users[cell[keep]]), 1),
            server=np.full(k, rng.choice(n_servers, p=sw)) if n_servers else np.full(k, -1),
        )


def _pace(
    intended: np.ndarray, base_ms: np.ndarray, stall: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Closed-loop pacing: an operation starts at its intended time or when the previous one completes."""
    d = base_ms / 1000.0
    if stall is None:
        # Lindley: C_k = D_k + max_{j<=k} (I_j - D_{j-1}), D = cumulative service
        cum = np.cumsum(d)
        prev = np.concatenate([[0.0], cum[:-1]])
        completion = cum + np.maximum.accumulate(intended - prev)
        start = completion - d
        return start, d * 1000.0
    s0, s1 = stall[0], stall[0] + stall[1]
    start = np.empty_like(intended)
    dur = np.empty_like(d)
    free = -np.inf
    for k in range(len(intended)):
        st = max(intended[k], free)
        done = st + d[k]
        if st < s1 and done > s0:  # in flight during the stall, or started inside it
            done = s1 + d[k]
        start[k], dur[k] = st, (done - st) * 1000.0
        free = done
    return start, dur


def _sessions(
    spec: SynthSpec,
    rng: np.random.Generator,
    grid: np.ndarray,
    users: np.ndarray,
    g_lat: np.ndarray,
    op_names: list[str],
    sw: np.ndarray,
    cols: _Cols,
) -> None:
    lam = users / spec.session_s * DT
    counts = rng.poisson(lam)
    cell = np.repeat(np.arange(len(grid)), counts)
    t = grid[cell] + rng.uniform(0.0, DT, len(cell))
    m = len(cell)
    logon = (
        spec.logon_ms
        * np.exp(0.3 * rng.standard_normal(m))
        * _latency_mult(spec, t, users[cell], g_lat[cell])
    )
    session = spec.session_s * 1000.0 * rng.uniform(0.8, 1.2, m)
    server = rng.choice(len(spec.servers), size=m, p=sw) if spec.servers else np.full(m, -1)
    ucount = np.maximum(np.round(users[cell]), 1)
    user = (rng.random(m) * ucount).astype(np.int64)
    for code, d in ((op_names.index(spec.logon_op), logon), (op_names.index(spec.session_op), session)):
        cols.add(
            t=t,
            ti=np.full(m, np.nan),
            dur=d,
            op=np.full(m, code),
            ok=np.ones(m, bool),
            err=np.full(m, -1),
            user=user,
            users=ucount,
            server=server,
        )


def build_run(spec: SynthSpec, path: Path | None = None) -> Run:
    """A synthetic run in memory (no files)."""
    table, meta = build_table(spec)
    p = path or Path(f"synthetic/{spec.label}/{spec.run_id}")
    return run_from_table(p, meta, table, complete=spec.status == "completed")


def write_run(spec: SynthSpec, results_dir: Path, rows_per_part: int = 250_000) -> Path:
    """Write a synthetic run folder ``<results_dir>/<label>/<run_id>/`` and return it."""
    table, meta = build_table(spec)
    run_dir = Path(results_dir) / spec.label / spec.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    for seq, start in enumerate(range(0, table.num_rows, rows_per_part)):
        write_part(run_dir, "synth", seq, table.slice(start, rows_per_part))
    write_meta(run_dir, meta)
    return run_dir


def spec_for_samples(spec: SynthSpec, n_samples: int) -> SynthSpec:
    """Scale the USL lambda so that a run has about ``n_samples`` samples (for the benchmark).

    Sample count is affine in lambda (paced and session rows do not depend on it): two short probes
    give the line.
    """
    short = spec.with_(steps=tuple((n, min(d, 20.0)) for n, d in spec.steps))
    factor = sum(d for _, d in spec.steps) / sum(d for _, d in short.steps)
    lam, sigma, kappa = spec.usl
    c1 = build_table(short)[0].num_rows * factor
    c2 = build_table(short.with_(usl=(2 * lam, sigma, kappa)))[0].num_rows * factor
    slope = (c2 - c1) / lam
    new_lam = lam + (n_samples - c1) / slope if slope > 0 else lam
    return spec.with_(usl=(max(new_lam, 1e-3), sigma, kappa))
