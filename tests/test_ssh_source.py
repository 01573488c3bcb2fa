"""SSH connections come from the user's own source address when the profile names ``source_addresses``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import psutil

from gateload.locustfiles.lib.bridged import source_for
from gateload.locustfiles.lib.sshops import GatewayConnection, connect_spec
from gateload.targets.profile import Profile
from gateload.targets.reference.farm import ReferenceFarm


def test_each_user_connects_from_its_own_loopback_address(fast_profile: Callable[..., Profile]) -> None:
    profile = fast_profile(
        farm__static_credentials=True,
        gateway__source_addresses="127.0.0.21-127.0.0.23",
        gateway__prompt="gw$ ",
    )
    sources = [source_for(profile, user_id) for user_id in range(4)]
    assert sources == ["127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.21"]  # rotating by user id

    async def scenario() -> list[tuple[str, str, bool]]:
        async with ReferenceFarm(profile, seed=11) as farm:
            account = next(iter(farm.state.accounts.values()))
            seen = []
            for source in sources[:3]:
                spec = connect_spec(profile, account.username, account.password, source=source)
                conn = GatewayConnection(replace(spec, port=farm.gateway_port, verify_host_key=False))
                await asyncio.wait_for(conn.connect(), 10)
                await asyncio.wait_for(conn.open_shell(), 10)
                local = conn.sock.getsockname()
                # the server's end of the same connection has that address and port as its peer
                server_saw = any(
                    c.laddr and c.laddr.port == farm.gateway_port and c.raddr == local
                    for c in psutil.net_connections(kind="tcp4")
                )
                seen.append((source, local[0], server_saw))
                await conn.close()
            return seen

    for source, local, server_saw in asyncio.run(scenario()):
        assert local == source and server_saw, (source, local, server_saw)


def test_without_source_addresses_the_system_picks(fast_profile: Callable[..., Profile]) -> None:
    profile = fast_profile()
    assert source_for(profile, 0) is None
    assert connect_spec(profile, "u", "p").source is None
