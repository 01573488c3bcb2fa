"""Operations catalogues of the load generator's users, and the catalogue of a run (meta.json).

Each protocol declares its own operations next to its code (SSH: ``gateway.SSH_CATALOGUE``; the
homeoffice session's rows: ``session.SESSION_CATALOGUE``). The portal's requests are declared here,
because the portal client fires them under the names of its flow. A user class says what it records
with a classmethod ``operations(profile) -> Catalogue``; :func:`run_catalogue` merges those of a run's
user classes. No Locust import here: the analysis' data model is :mod:`analysis.catalogue`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from analysis.catalogue import Catalogue, Operation

HTTP = "HTTP"
_HTTP_ERRORS = (
    "http_401",
    "http_403",
    "http_503",
    "http_5xx",
    "http_4xx",
    "refused",
    "reset",
    "timeout",
    "tls_error",
    "other",
)


def _http(name: str, what: str, activities: tuple[str, ...] = ()) -> Operation:
    return Operation(HTTP, name, what, errors=_HTTP_ERRORS, activities=activities)


#: The reference portal's requests (``targets/reference``; a real portal's profile describes the same flow).
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
    """The portal requests a user records with ``profile`` (the reference portal's names)."""
    return PORTAL_CATALOGUE


def run_catalogue(user_classes: Iterable[type], profile: Any) -> Catalogue | None:
    """The merged catalogue of a run's user classes, or None when none declares one (or no profile)."""
    if profile is None:
        return None
    declared = [cls.operations(profile) for cls in user_classes if callable(getattr(cls, "operations", None))]
    return Catalogue.merge(declared) if declared else None
