"""The farm's internal "intranet" HTTP service, reached by clients only through SSH tunnels.

It always listens on loopback. A request that arrived through a gateway tunnel is charged one
``tunnel_request`` service time on that gateway server, which the response names in its server
header; the gateway registers each tunnel's local TCP port in ``FarmContext.tunnel_sources``.
"""

from __future__ import annotations

from aiohttp import web

from gateload.targets.reference.context import BALANCER_ID, FarmContext

PAGE = """<!doctype html>
<html><head><title>Intranet</title></head><body>
<h1>City intranet</h1>
<p>Canteen menu, phone book and forms. This page is served by the reference farm.</p>
</body></html>
"""


def build_intranet_app(ctx: FarmContext) -> web.Application:
    """The intranet application: ``GET /`` answers a small HTML page."""
    header = ctx.profile.portal.server_header or "X-Gateload-Server"

    async def index(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        server = ctx.tunnel_sources.get(peer[1]) if peer else None
        if server is not None:
            await server.work("tunnel_request")
        return web.Response(
            text=PAGE, content_type="text/html", headers={header: server.id if server else BALANCER_ID}
        )

    app = web.Application()
    app.add_routes([web.get("/", index)])
    return app
