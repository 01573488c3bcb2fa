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
"""

from __future__ import annotations

from typing import Any

from locust import events

from gateload.locustfiles.lib import options, runfolder, webview
from gateload.locustfiles.lib.portal import PortalUser
from gateload.locustfiles.lib.remoteuser import GatewayUser
from gateload.locustfiles.lib.session import HomeofficeUser

__all__ = ["GatewayUser", "HomeofficeUser", "PortalUser"]


@events.init_command_line_parser.add_listener
def _add_gateload_options(parser: Any, **_kw: Any) -> None:
    options.add_arguments(parser)


@events.init.add_listener
def _attach_gateload(environment: Any, runner: Any = None, web_ui: Any = None, **_kw: Any) -> None:
    controller = runfolder.attach(environment, web_ui)
    if getattr(environment, "web_ui", None) is not None:  # local runner or master with the web UI
        webview.attach(environment, environment.web_ui, controller)
