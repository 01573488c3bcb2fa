"""Typing bursts from asyncssh's data callbacks (sshtyping.py) against a scripted in-process shell.

Each scripted shell answers keystroke k as its test says: the key, escapes and redraws before it,
output after it, nothing, or the end of the channel. What matters besides the samples is what the
typist leaves: output that was no echo must still be readable from the shell's stdout, in order.
Everything runs under ``asyncio.run`` (this pytest process is gevent-patched; nothing here needs the
bridge) and no assertion depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import asyncssh
import pytest

from gateload.locustfiles.lib.errors import classify
from gateload.locustfiles.lib.sshops import ConnectSpec, GatewayConnection
from gateload.locustfiles.lib.sshtyping import KeySample

PROMPT = b"$ "
# What the shell does for keystroke k (0-based) with key byte c: (delay in s, bytes or None = close).
Script = Callable[[int, bytes], Sequence[tuple[float, bytes | None]]]


def echo(k: int, key: bytes) -> Sequence[tuple[float, bytes | None]]:
    return [(0.0, key)]


class _Shell(asyncssh.SSHServerSession):  # type: ignore[misc]
    def __init__(self, script: Script, after_prompt: bytes) -> None:
        self.script, self.after_prompt = script, after_prompt
        self.k = 0
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def pty_requested(self, *_args: object) -> bool:
        return True

    def shell_requested(self) -> bool:
        return True

    def session_started(self) -> None:
        assert self.chan is not None
        self.chan.write(PROMPT + self.after_prompt)

    def data_received(self, data: bytes, datatype: object) -> None:
        loop = asyncio.get_running_loop()
        for c in data:
            for delay, out in self.script(self.k, bytes((c,))):
                loop.call_later(delay, self._out, out)
            self.k += 1

    def _out(self, out: bytes | None) -> None:
        assert self.chan is not None
        if out is None:
            self.chan.close()
        elif not self.chan.is_closing():
            self.chan.write(out)


class _Server(asyncssh.SSHServer):  # type: ignore[misc]
    def __init__(self, script: Script, after_prompt: bytes) -> None:
        self.script, self.after_prompt = script, after_prompt

    def session_requested(self) -> _Shell:
        return _Shell(self.script, self.after_prompt)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return True


async def _typed(
    script: Script,
    text: bytes,
    *,
    interval_s: float = 0.0,
    timeout_s: float = 5.0,
    after_prompt: bytes = b"",
    then_read: int = 0,
    cancel_after_s: float | None = None,
) -> tuple[list[KeySample], bytes]:
    """Type ``text`` into a scripted shell; the samples and ``then_read`` bytes read from stdout after."""
    server = await asyncssh.create_server(
        lambda: _Server(script, after_prompt),
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        encoding=None,
    )
    port = server.sockets[0].getsockname()[1]
    conn = GatewayConnection(
        ConnectSpec("127.0.0.1", port, "u", "p", verify_host_key=False, prompt=PROMPT, timeout_s=5)
    )
    samples: list[KeySample] = []
    try:
        await conn.connect()
        await asyncio.wait_for(conn.open_shell(), 5)
        burst = asyncio.ensure_future(conn.type_burst(text, interval_s, timeout_s))
        if cancel_after_s is None:
            samples = await burst
        else:
            await asyncio.sleep(cancel_after_s)
            burst.cancel()
            with pytest.raises(asyncio.CancelledError):
                await burst
        shell = conn._shell()
        assert shell.typist is None, "the typist stays attached after the burst"
        rest = await asyncio.wait_for(shell.stdout.readexactly(then_read), 5) if then_read else b""
    finally:
        conn.abort()
        server.close()
    return samples, rest


def _oks(samples: list[KeySample]) -> list[bool]:
    return [s.outcome.ok for s in samples]


def test_every_key_is_timed_to_its_echo() -> None:
    samples, _ = asyncio.run(_typed(echo, b"echo hi"))
    assert _oks(samples) == [True] * 7
    assert all(s.outcome.value == 1 and s.outcome.duration_ms > 0 for s in samples)
    starts = [s.outcome.start_time for s in samples]
    assert starts == sorted(starts)


def test_output_after_the_last_echo_stays_for_the_next_reader() -> None:
    def script(k: int, key: bytes) -> Sequence[tuple[float, bytes | None]]:
        return [(0.0, key + b"TAIL")] if k == 2 else [(0.0, key)]

    samples, rest = asyncio.run(_typed(script, b"abc", then_read=4))
    assert _oks(samples) == [True] * 3
    assert rest == b"TAIL"


def test_output_waiting_before_the_burst_is_matched_as_part_of_the_first_echo() -> None:
    def script(k: int, key: bytes) -> Sequence[tuple[float, bytes | None]]:
        return [(0.0, key + b"TAIL")] if k == 1 else [(0.0, key)]

    # bash writes bracketed-paste mode after its prompt: it is in the stream when typing starts
    samples, rest = asyncio.run(_typed(script, b"ab", after_prompt=b"\x1b[?2004h", then_read=4))
    assert _oks(samples) == [True, True]
    assert rest == b"TAIL"  # the escape went with the first echo


def test_line_editor_redraws_and_escapes_before_the_key_are_part_of_its_echo() -> None:
    def zsh(k: int, key: bytes) -> Sequence[tuple[float, bytes | None]]:
        # zsh: the second key of a line redraws the first; escapes arrive split over two writes
        if k == 1:
            return [(0.0, b"\x08e" + key)]
        if k == 2:
            return [(0.0, b"\x1b[?20"), (0.02, b"04h" + key)]
        return [(0.0, key)]

    samples, _ = asyncio.run(_typed(zsh, b"ech"))
    assert _oks(samples) == [True] * 3


def test_unexpected_output_fails_the_key_and_what_follows_stays_in_the_stream() -> None:
    def script(k: int, key: bytes) -> Sequence[tuple[float, bytes | None]]:
        return [(0.0, b"Z" + key + b"!")] if k == 1 else [(0.0, key)]

    samples, rest = asyncio.run(_typed(script, b"abc", then_read=2))
    assert _oks(samples) == [True, False]
    error = samples[1].outcome.error
    assert classify(error) == "ssh_error" and "unexpected echo" in str(error)
    assert rest == b"b!"  # only the unexpected "Z" was taken


def test_a_key_without_echo_times_out_after_the_timeout() -> None:
    def script(k: int, key: bytes) -> Sequence[tuple[float, bytes | None]]:
        return [] if k == 2 else [(0.0, key)]

    samples, _ = asyncio.run(_typed(script, b"abcd", timeout_s=0.3))
    assert _oks(samples) == [True, True, False]
    last = samples[-1].outcome
    assert isinstance(last.error, TimeoutError)
    assert last.duration_ms >= 300  # never before the timeout (the watchdog re-arms for the rest)


def test_a_shell_that_ends_mid_burst_fails_the_pending_key() -> None:
    def script(k: int, key: bytes) -> Sequence[tuple[float, bytes | None]]:
        return [(0.0, None)] if k == 1 else [(0.0, key)]

    samples, _ = asyncio.run(_typed(script, b"abc"))
    assert _oks(samples) == [True, False]
    assert isinstance(samples[1].outcome.error, asyncio.IncompleteReadError | asyncssh.Error | OSError)


def test_paced_keys_keep_their_plan_and_output_between_them_goes_to_the_next_echo() -> None:
    def script(k: int, key: bytes) -> Sequence[tuple[float, bytes | None]]:
        return [(0.0, key), (0.01, b"\x1b[K")]  # an escape after each echo, before the next key

    samples, _ = asyncio.run(_typed(script, b"abcd", interval_s=0.05))
    assert _oks(samples) == [True] * 4
    planned = [s.t_intended - samples[0].t_intended for s in samples]
    assert planned == pytest.approx([0.0, 0.05, 0.10, 0.15])
    # no key is written before its plan (a late one is written at once, so only the lower bound holds)
    assert all(s.outcome.start_time >= s.t_intended - 0.001 for s in samples)


def test_a_cancelled_burst_detaches_and_later_output_reaches_the_stream() -> None:
    def script(k: int, key: bytes) -> Sequence[tuple[float, bytes | None]]:
        return [(0.5, key + b"LATE")] if k == 1 else [(0.0, key)]

    _, rest = asyncio.run(_typed(script, b"abc", cancel_after_s=0.2, then_read=5))
    assert rest == b"bLATE"
