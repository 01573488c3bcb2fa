"""Universal Scalability Law: X(N) = lambda N / (1 + sigma (N - 1) + kappa N (N - 1)).

``lambda`` is the throughput of one unit of concurrency, ``sigma`` contention (serialisation),
``kappa`` coherency (crosstalk). Throughput peaks at ``N* = sqrt((1 - sigma) / kappa)`` with
``x_max = X(N*)``. The fit is nonlinear least squares on all three parameters (the ``nlxb`` / ``nls``
method of the R ``usl`` package), started from Gunther's quadratic linearisation, with
``lambda > 0`` and ``0 <= sigma, kappa``. Standard errors are the usual ``s^2 (J'J)^-1`` ones.

Checked against the published fit of the SPEC SDM91 data (Gunther, *Guerrilla Capacity Planning*,
and R ``usl`` 2.0: sigma 0.0277285, kappa 0.0001044, lambda 89.9952330); see tests/test_analysis_usl.py.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from gateload.errors import InputError


@dataclass
class UslFit:
    lam: float
    sigma: float
    kappa: float
    n_points: int
    r_squared: float
    std_error: dict[str, float] = field(default_factory=dict)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # bootstrap intervals, when computed

    @property
    def n_star(self) -> float:
        """Concurrency of peak throughput; infinite when there is no coherency penalty."""
        if self.kappa <= 0:
            return math.inf
        return math.sqrt(max(1.0 - self.sigma, 0.0) / self.kappa)

    @property
    def x_max(self) -> float:
        """Peak throughput: X(N*), or the asymptote lambda / sigma when kappa is 0."""
        n = self.n_star
        if math.isinf(n):
            return self.lam / self.sigma if self.sigma > 0 else math.inf
        return float(usl_x(n, self.lam, self.sigma, self.kappa))

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        return usl_x(np.asarray(n, dtype=float), self.lam, self.sigma, self.kappa)

    def as_dict(self) -> dict[str, object]:
        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        out: dict[str, object] = {
            "lambda": num(self.lam),
            "sigma": num(self.sigma),
            "kappa": num(self.kappa),
            "n_star": num(self.n_star),
            "x_max": num(self.x_max),
            "r_squared": num(self.r_squared),
            "n_points": self.n_points,
        }
        if self.std_error:
            out["std_error"] = {k: num(v) for k, v in self.std_error.items()}
        if self.ci:
            out["ci"] = {k: [num(lo), num(hi)] for k, (lo, hi) in self.ci.items()}
        return out


def usl_x(
    n: np.ndarray | float, lam: np.ndarray | float, sigma: np.ndarray | float, kappa: np.ndarray | float
) -> np.ndarray:
    n = np.asarray(n, dtype=float)
    return lam * n / (1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0))


def _start(n: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Initial values: lambda from the lowest load, sigma/kappa from Gunther's quadratic (N/C - 1)."""
    i = int(np.argmin(n))
    lam = x[i] / n[i]
    c = x / lam
    y = n / c - 1.0
    a = np.column_stack([n - 1.0, n * (n - 1.0)])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    sigma = float(np.clip(coef[0], 0.0, 0.99))
    kappa = float(max(coef[1], 0.0))
    return np.array([lam, sigma, kappa])


def _fit(n: np.ndarray, x: np.ndarray, p0: np.ndarray) -> np.ndarray:
    def resid(p: np.ndarray) -> np.ndarray:
        return usl_x(n, *p) - x

    def jac(p: np.ndarray) -> np.ndarray:
        lam, s, k = p
        d = 1.0 + s * (n - 1.0) + k * n * (n - 1.0)
        return np.column_stack([n / d, -lam * n * (n - 1.0) / d**2, -lam * n * n * (n - 1.0) / d**2])

    # kappa lives on a scale ~1e-4; x_scale="jac" keeps the trust region well conditioned
    res = least_squares(
        resid,
        p0,
        jac=jac,
        bounds=([1e-300, 0.0, 0.0], [np.inf, 1.0, np.inf]),
        x_scale="jac",
        xtol=1e-14,
        ftol=1e-14,
        gtol=1e-14,
        max_nfev=2000,
    )
    return res.x


def fit_usl(n: Sequence[float] | np.ndarray, x: Sequence[float] | np.ndarray) -> UslFit:
    """Fit the USL to concurrency ``n`` and throughput ``x`` (at least 3 distinct positive loads)."""
    n_arr = np.asarray(n, dtype=float)
    x_arr = np.asarray(x, dtype=float)
    ok = np.isfinite(n_arr) & np.isfinite(x_arr) & (n_arr > 0) & (x_arr >= 0)
    n_arr, x_arr = n_arr[ok], x_arr[ok]
    if len(np.unique(n_arr)) < 3:
        raise InputError(
            f"a USL fit needs throughput at 3 or more distinct loads, got {len(np.unique(n_arr))}; "
            "add load steps"
        )
    if not np.any(x_arr > 0):
        raise InputError("a USL fit needs some non-zero throughput; every value is 0")
    p0 = _start(n_arr, x_arr)
    p = _fit(n_arr, x_arr, p0)
    # a second start from a pure-contention guess guards against a poor linearised start
    p_alt = _fit(n_arr, x_arr, np.array([p0[0], 0.05, 1e-6]))
    if _sse(n_arr, x_arr, p_alt) < _sse(n_arr, x_arr, p):
        p = p_alt
    fit = UslFit(float(p[0]), float(p[1]), float(p[2]), len(n_arr), _r2(n_arr, x_arr, p))
    fit.std_error = _std_error(n_arr, x_arr, p)
    return fit


def _sse(n: np.ndarray, x: np.ndarray, p: np.ndarray) -> float:
    return float(np.sum((usl_x(n, *p) - x) ** 2))


def _r2(n: np.ndarray, x: np.ndarray, p: np.ndarray) -> float:
    tss = float(np.sum((x - x.mean()) ** 2))
    return 1.0 - _sse(n, x, p) / tss if tss > 0 else math.nan


def _std_error(n: np.ndarray, x: np.ndarray, p: np.ndarray) -> dict[str, float]:
    dof = len(n) - 3
    if dof <= 0:
        return {}
    lam, s, k = p
    d = 1.0 + s * (n - 1.0) + k * n * (n - 1.0)
    j = np.column_stack([n / d, -lam * n * (n - 1.0) / d**2, -lam * n * n * (n - 1.0) / d**2])
    s2 = _sse(n, x, p) / dof
    try:
        cov = s2 * np.linalg.inv(j.T @ j)
    except np.linalg.LinAlgError:
        return {}
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    return {"lambda": float(se[0]), "sigma": float(se[1]), "kappa": float(se[2])}


def fit_usl_boot(
    n: Sequence[float] | np.ndarray,
    x: Sequence[float] | np.ndarray,
    x_boot: np.ndarray,
    confidence: float,
    max_fits: int = 200,
) -> UslFit:
    """Fit the point estimate and add bootstrap intervals from replicate throughputs.

    ``x_boot`` is ``(B, len(n))``: bootstrap replicates of the throughput at each load, e.g. from the
    block bootstrap of each step. The first ``max_fits`` rows are refitted together from the point fit.
    """
    fit = fit_usl(n, x)
    n_arr = np.asarray(n, dtype=float)
    xb = np.asarray(x_boot, dtype=float)[:max_fits]
    xb = xb[np.all(np.isfinite(xb), axis=1)]
    if len(xb) < 20:
        return fit
    p = fit_many(n_arr, xb, np.array([fit.lam, fit.sigma, fit.kappa]))
    lam, sigma, kappa = p[:, 0], p[:, 1], p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        n_star = np.where(kappa > 0, np.sqrt(np.maximum(1.0 - sigma, 0.0) / kappa), np.inf)
        x_max = np.where(
            np.isfinite(n_star),
            usl_x(np.where(np.isfinite(n_star), n_star, 1.0), lam, sigma, kappa),
            np.where(sigma > 0, lam / sigma, np.inf),
        )
    a = (1.0 - confidence) / 2.0
    for key, col in (
        ("lambda", lam),
        ("sigma", sigma),
        ("kappa", kappa),
        ("n_star", n_star),
        ("x_max", x_max),
    ):
        if np.isinf(col).mean() > a:  # an unbounded side: say so rather than invent a bound
            lo = float(np.quantile(col[np.isfinite(col)], a)) if np.isfinite(col).any() else math.nan
            fit.ci[key] = (lo, math.inf)
        else:
            fit.ci[key] = (float(np.quantile(col, a)), float(np.quantile(col, 1.0 - a)))
    return fit


def fit_many(n: np.ndarray, xs: np.ndarray, p0: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Least-squares USL fits of many data sets (rows of ``xs``) at once, from one start ``p0``.

    A batched Levenberg-Marquardt on scaled parameters, projected onto the bounds (lambda > 0,
    0 <= sigma <= 1, kappa >= 0): a few milliseconds for hundreds of bootstrap replicates, where one
    scipy ``least_squares`` call per replicate takes seconds.
    """
    rows = xs.shape[0]
    scale = np.maximum(np.abs(p0), [1e-9, 1e-6, 1e-9])
    p = np.tile(p0, (rows, 1))
    mu = np.full(rows, 1e-3)
    lower = np.array([1e-300, 0.0, 0.0])
    upper = np.array([np.inf, 1.0, np.inf])
    nn = n[None, :]

    def resid(p: np.ndarray) -> np.ndarray:
        return usl_x(nn, p[:, :1], p[:, 1:2], p[:, 2:3]) - xs

    r = resid(p)
    sse = (r * r).sum(axis=1)
    for _ in range(iterations):
        lam, s, k = p[:, :1], p[:, 1:2], p[:, 2:3]
        d = 1.0 + s * (nn - 1.0) + k * nn * (nn - 1.0)
        jac = np.stack([nn / d, -lam * nn * (nn - 1.0) / d**2, -lam * nn * nn * (nn - 1.0) / d**2], axis=2)
        jac = jac * scale  # columns in scaled units: kappa ~1e-4 next to lambda ~100
        a = np.einsum("rmi,rmj->rij", jac, jac)
        g = np.einsum("rmi,rm->ri", jac, r)
        diag = np.einsum("rii->ri", a)
        damped = a + mu[:, None, None] * (diag[:, :, None] * np.eye(3) + 1e-12 * np.eye(3))
        try:
            step = -np.linalg.solve(damped, g[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            break
        trial = np.clip(p + step * scale, lower, upper)
        r_trial = resid(trial)
        sse_trial = (r_trial * r_trial).sum(axis=1)
        better = sse_trial < sse
        p = np.where(better[:, None], trial, p)
        r = np.where(better[:, None], r_trial, r)
        improvement = np.where(better, (sse - sse_trial) / np.maximum(sse, 1e-300), 0.0)
        sse = np.where(better, sse_trial, sse)
        mu = np.where(better, mu / 3.0, mu * 4.0)
        settled = improvement < 1e-12
        if np.all(settled & (better | (mu > 1e6))):  # every row converged or cannot move any more
            break
    return p


# ------------------------------------------------------------------------------------------------ CSV


def _column(header: list[str] | None, spec: str | None, default: int, path: Path, ncols: int) -> int:
    if spec is None:
        return default
    if header is not None and spec in header:
        return header.index(spec)
    if spec.isdigit() and 1 <= int(spec) <= ncols:
        return int(spec) - 1
    names = ", ".join(header) if header else f"1..{ncols}"
    raise InputError(f"{path}: no column {spec!r}; use a header name or a 1-based position ({names})")


def read_usl_csv(
    path: str | Path, n_col: str | None = None, x_col: str | None = None
) -> tuple[list[float], list[float]]:
    """Concurrency and throughput columns of a CSV (header optional; ``#`` lines are comments)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such CSV file; pass a CSV of concurrency and throughput")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read it as text ({exc}); pass a CSV file") from None
    rows = [
        r
        for r in csv.reader(
            line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
        )
    ]
    if not rows:
        raise InputError(f"{p}: the file is empty; pass a CSV of concurrency and throughput")
    ncols = max(len(r) for r in rows)
    header = None
    if not all(_is_float(c) for c in rows[0][:2]):
        header = [c.strip() for c in rows[0]]
        rows = rows[1:]
    if ncols < 2 and (n_col is None or x_col is None):
        raise InputError(f"{p}: need two columns (concurrency, throughput), found {ncols}")
    i_n = _column(header, n_col, 0, p, ncols)
    i_x = _column(header, x_col, 1, p, ncols)
    n, x = [], []
    for lineno, r in enumerate(rows, start=2 if header else 1):
        try:
            n.append(float(r[i_n]))
            x.append(float(r[i_x]))
        except (ValueError, IndexError):
            raise InputError(
                f"{p}: row {lineno} has no number in column {i_n + 1} or {i_x + 1}: {r!r}; fix the row"
            ) from None
    if any(v <= 0 for v in n):
        raise InputError(f"{p}: concurrency must be > 0 in every row; fix the rows or choose --n-col")
    if len(set(n)) < 3:
        raise InputError(f"{p}: a USL fit needs 3 or more distinct concurrency values, got {len(set(n))}")
    return n, x


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
