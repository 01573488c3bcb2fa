"""The gateload locustfile: homeoffice employees against a portal + SSH gateway farm.

    locust -f locustfiles/homeoffice.py --profile targets/profiles/reference-before.toml
    locust -f locustfiles/homeoffice.py --headless -u 50 -r 10 -t 30s \\
        --profile targets/profiles/reference-before.toml --results-dir results/smoke --label before

User classes: ``HomeofficeUser`` (a whole session: portal logon, ticket, SSH shell, work, logoff),
``PortalUser`` (the portal alone) and ``GatewayUser`` (the gateway alone); name one or more at the end
of the command line to run only those.

gateload's options, on the command line, in the web UI, as ``LOCUST_<OPTION>`` environment variables
and in ``locust.conf`` (Locust's ``--help`` is printed before the locustfile loads, so it does not list
them: ``python -m gateload.locustfiles.lib.options`` does): ``--shape none|step|workday|arrivals`` with
``--step-users 10,20,40`` (or ``--step-start/--step-add/--step-count``), ``--step-hold``,
``--step-ramp``, ``--workday-minutes``, ``--arrival-rate``; ``--results-dir``, ``--label``,
``--run-id``, ``--allow-remote``, ``--users-per-account``. ``--profile`` (Locust's own option) names
the target profile.

Every start writes ``<results-dir>/<label>/<run-id>/`` (raw samples, meta.json, Locust's CSV and
HTML report; see results/README.md). The web UI has a "gateload" tab with the run's sessions, logon
time, keystroke echo and per-server shares (``locustfiles/lib/webview.py``).

Your own locustfile: ``from gateload.users import HomeofficeUser`` (see :mod:`gateload.users`).
"""

from __future__ import annotations

# The classes and the option/recorder hooks live in the package (gateload.users, the public API), so a
# user's own locustfile gets the same by importing them; this file stays for `locust -f` and the campaign.
from gateload.users import GatewayUser, HomeofficeUser, PortalUser

__all__ = ["GatewayUser", "HomeofficeUser", "PortalUser"]
