"""A run's data model: its samples as flat numpy arrays and its step schedule (``runs.py`` reads them).

Kept apart from ``runs.py`` so the analysis that reads a run (``steady.py``) needs only these types and
a run's shape (:class:`RunData`), not the module that loads runs and builds its pandas views on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from gateload.analysis.catalogue import Catalogue


@dataclass(frozen=True)
class Step:
    """One step of the load schedule, times in seconds since the run origin."""

    index: int
    start: float
    end: float
    users: int
    spawn_rate: float
    spawned: float | None = None  # when the recorder saw every user of the step spawned, if it says


@dataclass
class Samples:
    """Samples of one run as flat numpy arrays, sorted by start time.

    Times are seconds since the run origin (``Run.origin``); categorical columns are int32 codes
    into the matching label list, -1 where null.
    """

    t: np.ndarray
    dur: np.ndarray  # ms
    t_intended: np.ndarray  # NaN when the operation is not paced
    op: np.ndarray
    ops: list[str]  # "<TYPE> <name>"
    op_is_session: np.ndarray  # bool per op code: an aggregate (SESSION rows, catalogue ``aggregate``)
    success: np.ndarray
    error: np.ndarray
    errors: list[str]
    server: np.ndarray
    servers: list[str]
    user: np.ndarray  # int64 (worker code << 32 | user_id), -1 when unknown
    user_count: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    def op_code(self, name: str) -> int:
        """The code of an operation, or -1 when the run has none of it."""
        try:
            return self.ops.index(name)
        except ValueError:
            return -1


class RunData(Protocol):
    """What the analysis reads of a run: ``gateload.analysis.runs.Run`` is one."""

    @property
    def path(self) -> Path: ...

    @property
    def samples(self) -> Samples: ...

    @property
    def steps(self) -> list[Step]: ...

    @property
    def catalogue(self) -> Catalogue: ...
