"""The public API for your own locustfile: gateload's user classes, ready for ``locust -f``.

    # mylocustfile.py
    from gateload.users import HomeofficeUser

    class Clerk(HomeofficeUser):
        weight = 3

    locust -f mylocustfile.py --profile my-gateway.toml --headless -u 20 -t 1m

Importing this module also adds gateload's options to Locust (``--profile``, ``--shape``, ``--results-dir``,
... : ``python -m gateload.locustfiles.lib.options`` lists them) and attaches the run folder recorder and
the web UI's "gateload" tab, exactly as ``locustfiles/homeoffice.py`` does: that file is these imports.

- :class:`HomeofficeUser`: a whole employee session: portal logon, ticket, remote session, work, logoff.
- :class:`PortalUser`: the portal alone (login, MFA, apps, launch, documents, logout).
- :class:`GatewayUser`: the gateway alone (the remote-access protocol of the profile's ``[gateway]``).
- :class:`RemoteUser`: the abstract base of the two users with a remote session, to subclass.

It imports Locust (and so gevent's monkey-patching): import it only in a locustfile, never from a tool
that is not one. ``import gateload`` and the ``gateload`` command do not import it.
"""

from __future__ import annotations

from typing import Any

from locust import events

from gateload.locustfiles.lib import options, runfolder, webview
from gateload.locustfiles.lib.portal import PortalUser
from gateload.locustfiles.lib.remoteuser import GatewayUser, RemoteUser
from gateload.locustfiles.lib.session import HomeofficeUser

__all__ = ["GatewayUser", "HomeofficeUser", "PortalUser", "RemoteUser"]


@events.init_command_line_parser.add_listener
def _add_gateload_options(parser: Any, **_kw: Any) -> None:
    options.add_arguments(parser)


@events.init.add_listener
def _attach_gateload(environment: Any, runner: Any = None, web_ui: Any = None, **_kw: Any) -> None:
    controller = runfolder.attach(environment, web_ui)
    if getattr(environment, "web_ui", None) is not None:  # local runner or master with the web UI
        webview.attach(environment, environment.web_ui, controller)
