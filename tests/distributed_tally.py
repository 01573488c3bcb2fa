"""A second locustfile for the distributed test: each process counts the requests it fired itself.

Loaded beside the real locustfile (``-f locustfiles/homeoffice.py,tests/distributed_tally.py``). At
exit it writes ``{"worker": "hostname:pid", "requests": N, "failures": F}`` to the file named by
``GATELOAD_TALLY_FILE``, independently of gateload's recorder and of Locust's stats reporting, so the
test can check that the merged results are the sum of what every worker really did.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from locust import events

TALLY_ENV = "GATELOAD_TALLY_FILE"
_tally = {"requests": 0, "failures": 0}


@events.request.add_listener
def _count(exception: BaseException | None = None, **_kw: Any) -> None:
    _tally["requests"] += 1
    _tally["failures"] += exception is not None


@events.quitting.add_listener
def _write(**_kw: Any) -> None:
    path = os.environ.get(TALLY_ENV)
    if path:
        worker = f"{socket.gethostname()}:{os.getpid()}"
        with open(path, "w") as fh:
            json.dump({"worker": worker, **_tally}, fh)
