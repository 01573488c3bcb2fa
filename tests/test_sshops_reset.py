"""A gateway that resets the TCP connection before the SSH handshake gives a "reset", not "other"."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import asyncssh
import pytest

from gateload.locustfiles.lib.errors import safe_error
from gateload.locustfiles.lib.sshops import _reset_before_handshake


def _reset_socket() -> socket.socket:
    """A connected client socket whose peer has already answered with a TCP RST."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # linger 0: RST
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # until the RST has arrived: the peer's address is gone
        try:
            client.getpeername()
        except OSError:
            break
        time.sleep(0.01)
    client.setblocking(False)
    return client


async def _handshake(sock: socket.socket) -> None:
    with _reset_before_handshake():
        await asyncssh.connect(sock=sock, username="u", known_hosts=None, config=None, agent_path=None)


def test_reset_before_handshake_is_classified_reset() -> None:
    sock = _reset_socket()
    with pytest.raises(ConnectionResetError) as caught:
        asyncio.run(_handshake(sock))
    error = safe_error(caught.value)
    assert error is not None and error.error_class == "reset"
    assert isinstance(caught.value.__cause__, TypeError)  # what asyncssh raised underneath


def test_other_type_errors_are_not_hidden() -> None:
    with pytest.raises(TypeError), _reset_before_handshake():
        raise TypeError("a bug of ours stays a bug")
