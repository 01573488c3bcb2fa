"""Operations catalogues of the load generator's users, and the catalogue of a run (meta.json).

Each protocol declares its own operations next to its code (SSH: ``gateway.SSH_CATALOGUE``; the
homeoffice session's rows: ``session.SESSION_CATALOGUE``). The portal's requests are the sample names
of the profile's portal flow (``gateload.targets.portalflow.sample_names``), so they are built here from the
profile. A user class says what it records with a classmethod ``operations(profile) -> Catalogue``;
:func:`run_catalogue` merges those of a run's user classes. No Locust import here: the analysis' data
model is :mod:`gateload.analysis.catalogue`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateload.analysis.catalogue import HTTP_ERRORS, Catalogue, Operation
from gateload.targets.portalflow import sample_names

HTTP = "HTTP"


def _http(name: str, what: str, activities: tuple[str, ...] = ()) -> Operation:
    return Operation(HTTP, name, what, errors=HTTP_ERRORS, activities=activities)


#: The reference portal's requests (``targets/reference``), for callers without a profile.
PORTAL_CATALOGUE = Catalogue(
    ("portal",),
    (
        _http("GET /login", "the login page (CSRF token)"),
        _http("POST /login", "credentials"),
        _http("POST /mfa", "the TOTP step, when the portal asks for it"),
        _http("GET /api/apps", "the apps this employee may launch"),
        _http("POST /api/launch", "a one-time gateway ticket"),
        _http("GET /documents/[doc]", "a document download", activities=("document",)),
        _http("POST /logout", "logoff"),
    ),
)


def portal_catalogue(profile: Any) -> Catalogue:
    """The portal requests a user records with ``profile``: one operation per sample name of its flow
    (``[portal.flow]``, a ``flow_class``'s ``SAMPLE_NAMES``, or the reference flow), in phase order;
    the ``document`` phase serves the ``document`` activity."""
    if profile is None:
        return PORTAL_CATALOGUE
    ops: dict[str, Operation] = {}
    for phase, names in sample_names(profile).items():
        for name in names:
            activities = ("document",) if phase == "document" else ()
            ops.setdefault(name, _http(name, f"portal {phase} request", activities))
    return Catalogue(("portal",), tuple(ops.values()))


def run_catalogue(user_classes: Iterable[type], profile: Any) -> Catalogue | None:
    """The merged catalogue of a run's user classes, or None when none declares one (or no profile)."""
    if profile is None:
        return None
    declared = [ops(profile) for cls in user_classes if callable(ops := getattr(cls, "operations", None))]
    return Catalogue.merge(declared) if declared else None
