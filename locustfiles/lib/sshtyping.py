"""Typing into an SSH shell: keystrokes timed to their echoes, driven from asyncssh's data callbacks.

The keystroke path is the hottest one of a gateway session (bench/bench_ssh.py). Awaiting each echo
through asyncssh's stream API costs a read lock, a future and a task wake-up per keystroke; here
the shell's own ``data_received`` matches the echo and sends the next key at once (or schedules it
at its planned time), and the burst's coroutine wakes up once, when the burst is over.

Echoes are matched as shells send them (README "Shells and prompts"): the key itself, or escape
sequences, control bytes and redraws of the typed text before it (:func:`key_echo`). Output that is
not part of an echo stays in the stream for the next reader, as if the stream had been read.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from dataclasses import dataclass
from typing import Any

import asyncssh

from gateload.locustfiles.lib.aiobridge import Timed
from gateload.locustfiles.lib.errors import OperationError

# Terminal escape sequences a line editor writes around prompts and echoes (CSI such as bracketed
# paste "\x1b[?2004h", OSC such as xterm titles, and two-byte ones such as keypad mode "\x1b=").
ESCAPE = rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[ -Z\\^-~]"
_CONTROL = rb"\x00-\x1a\x1c-\x1f\x7f"  # control bytes but ESC (backspace, CR, ...)
_KEYS = tuple(bytes((c,)) for c in range(256))  # one-byte keys, built once


@dataclass(frozen=True, slots=True)
class KeySample:
    """One keystroke of a paced typing burst."""

    t_intended: float  # epoch seconds the keystroke was planned for (t0 + k * interval)
    outcome: Timed[int]


@functools.lru_cache(maxsize=256)
def key_echo(char: int, typed: bytes) -> re.Pattern[bytes]:
    """What may come back for keystroke ``char``: escapes, control bytes and redraws, then the key.

    A line editor may redraw what was typed before (zsh answers the second key of a line with
    backspace and both keys) and writes escape sequences, which can contain the key's letter: those
    are skipped as whole sequences. Any other byte ends the match early as unexpected output. Every
    token is prefix-free, so the first prefix of the output that matches is the only match.
    """
    key = re.escape(bytes((char,)))
    redraw = b"".join(re.escape(bytes((c,))) for c in sorted(set(typed)) if 32 <= c < 127 and c != char)
    allowed = (
        rb"(?:" + ESCAPE + rb"|[" + _CONTROL + rb"]" + (rb"|[" + redraw + rb"]" if redraw else b"") + rb")"
    )
    return re.compile(
        rb"\A" + allowed + rb"*?(?:" + key + rb"|[^" + _CONTROL + rb"\x1b" + redraw + key + rb"])"
    )


class StampClock:
    """How a keystroke's round trip is measured: ``start`` just before the key is written, ``stop``
    when its echo has arrived, given the time taken around it (``perf_counter`` milliseconds)."""

    def start(self) -> None:
        """The next write is a keystroke."""

    def stop(self, fallback_ms: float) -> float:
        """The keystroke's round trip in milliseconds."""
        return fallback_ms


class TypingProcess(asyncssh.SSHClientProcess):  # type: ignore[type-arg]
    """A shell process whose output goes to the burst being typed first, then to its stdout stream."""

    typist: _Typist | None = None

    def data_received(self, data: Any, datatype: Any) -> None:
        if self.typist is not None and datatype is None:
            self.typist.feed(data)
        else:
            super().data_received(data, datatype)

    def eof_received(self) -> bool:
        if self.typist is not None:
            self.typist.lost(None)
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.typist is not None:
            self.typist.lost(exc)
        super().connection_lost(exc)

    def take_output(self) -> bytes | BaseException:
        """The output no reader has taken yet (asyncssh's stdout buffer), or why no more can come."""
        buf = self._recv_buf[None]
        for item in buf:
            if isinstance(item, BaseException):
                return item
        if self._eof_received:
            return asyncio.IncompleteReadError(b"", 1)
        data = b"".join(item for item in buf if isinstance(item, bytes))
        buf.clear()
        self._recv_buf_len -= len(data)
        self._maybe_resume_reading()
        return data

    def give_back(self, data: bytes) -> None:
        """Output the typist took but no echo used: the stdout stream's, in order."""
        if data:
            super().data_received(data, None)


async def create_typing_shell(conn: asyncssh.SSHClientConnection, **kwargs: Any) -> TypingProcess:
    """A PTY shell as ``conn.create_process(**kwargs)`` makes one, of the typing kind."""
    _chan, session = await conn.create_session(TypingProcess, **kwargs)
    assert isinstance(session, TypingProcess)
    await session.redirect(asyncssh.PIPE, asyncssh.PIPE, asyncssh.PIPE)
    return session


async def type_burst(
    shell: TypingProcess, clock: StampClock, text: bytes, interval_s: float, timeout_s: float
) -> list[KeySample]:
    """Type ``text`` at a human pace, timing each keystroke until its echo.

    Keystroke k is planned for t0 + k * interval. A late echo delays the next keystroke (it is sent
    at once, not skipped); the plan is kept as ``t_intended`` so coordinated omission can be
    corrected. The burst stops at the first failure; a keystroke without its echo after
    ``timeout_s`` fails with ``TimeoutError``, one answered by other output than escape sequences,
    control bytes and redraws of ``text`` (:func:`key_echo`) with "unexpected echo", one cut off by
    the end of the shell or connection with what ended it.
    """
    typist = _Typist(shell, clock, text, interval_s, timeout_s)
    try:
        typist.begin()
        await typist.done
    finally:
        typist.end()
    return typist.samples


class _Typist:
    """One burst, typed from the shell's callbacks: each echo records its sample and sends the next key."""

    def __init__(
        self, shell: TypingProcess, clock: StampClock, text: bytes, interval_s: float, timeout_s: float
    ) -> None:
        self.shell, self.clock, self.text = shell, clock, text
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.samples: list[KeySample] = []
        self.k = 0
        self.t1 = 0.0  # perf_counter when the pending key was written; 0 when none is pending
        self.start_time = 0.0
        self.echo = b""  # the pending key's echo so far, when it did not start with the key
        self.held = b""  # output that came while no key was pending: the next key's to match
        self.t0_wall, self.t0 = time.time(), time.perf_counter()
        self.next_key: asyncio.TimerHandle | None = None
        self.watchdog = self.loop.call_later(timeout_s, self._watch)

    def begin(self) -> None:
        output = self.shell.take_output()
        if isinstance(output, BaseException):
            self._fail(output)
            return
        self.held = output
        self.shell.typist = self
        self._next()

    def end(self) -> None:
        """Detach from the shell (done, failed or cancelled); unused output goes back to the stream."""
        self.watchdog.cancel()
        if self.next_key is not None:
            self.next_key.cancel()
        if self.shell.typist is self:
            self.shell.typist = None
        held, self.held = self.held, b""
        self.shell.give_back(held)

    def feed(self, data: bytes) -> None:
        """The shell's output: echoes are taken, the rest is held for the next key or the stream."""
        if self.t1 and not self.done.done():
            data = self._match(data)
        self.held += data

    def lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._fail(exc or asyncio.IncompleteReadError(b"", 1))

    def _next(self) -> None:
        """Send key k now, or at its planned time; finish after the last."""
        if self.k == len(self.text):
            self._finish()
            return
        if self.interval_s:
            delay = self.t0 + self.k * self.interval_s - time.perf_counter()
            if delay > 0:
                self.next_key = self.loop.call_later(delay, self._send)
                return
        self._send()

    def _send(self) -> None:
        self.next_key = None
        self.start_time = time.time()
        self.clock.start()
        self.t1 = time.perf_counter()
        try:
            self.shell.stdin.write(_KEYS[self.text[self.k]])
        except Exception as exc:  # the channel is closing
            self._fail(exc)
            return
        held, self.held = self.held, b""
        if held:
            self.held = self._match(held) + self.held

    def _match(self, data: bytes) -> bytes:
        """Take echoes from ``data`` while a key is pending; returns the rest."""
        while data and self.t1:
            char = self.text[self.k]
            if not self.echo and data[0] == char:  # the usual echo: the key itself
                data = data[1:]
                self._echoed()
                continue
            data = self._match_slowly(data, char)
        return data

    def _match_slowly(self, data: bytes, char: int) -> bytes:
        """Escapes, control bytes and redraws before the key, a byte at a time (:func:`key_echo`)."""
        pattern = key_echo(char, self.text)
        for i in range(len(data)):
            self.echo += data[i : i + 1]
            if pattern.match(self.echo) is not None:
                echo, self.echo = self.echo, b""
                if echo.endswith(_KEYS[char]):
                    self._echoed()
                else:
                    self._fail(OperationError("ssh_error", "unexpected echo"))
                return data[i + 1 :]
        return b""

    def _echoed(self) -> None:
        ms = self.clock.stop((time.perf_counter() - self.t1) * 1000.0)
        self._record(Timed(self.start_time, ms, 1, None))
        self.t1 = 0.0
        self.k += 1
        self._next()

    def _watch(self) -> None:
        """One watchdog per burst: fails a key unanswered for ``timeout_s``, else re-arms itself."""
        left = self.t1 + self.timeout_s - time.perf_counter() if self.t1 else self.timeout_s
        if self.t1 and left <= 0:
            self._fail(TimeoutError())
        elif not self.done.done():
            self.watchdog = self.loop.call_later(max(left, 0.001), self._watch)

    def _fail(self, exc: BaseException) -> None:
        outcome: Timed[int]
        if self.t1:
            outcome = Timed(self.start_time, (time.perf_counter() - self.t1) * 1000.0, None, exc)
        else:  # no key was pending: the next one fails as it would have been written
            outcome = Timed(time.time(), 0.0, None, exc)
        self._record(outcome)
        self._finish()

    def _record(self, outcome: Timed[int]) -> None:
        self.samples.append(KeySample(self.t0_wall + self.k * self.interval_s, outcome))

    def _finish(self) -> None:
        self.t1 = 0.0
        if not self.done.done():
            self.done.set_result(None)
