"""The gateway's tiny command language, shared by the PTY shell and exec.

Commands: ``echo TEXT``, ``env``, ``screen N B`` (N screen-update bursts of B bytes), ``exit``, and
lines of shell assignments (``PS1='[x]''$ ' PROMPT_COMMAND=``) as any POSIX shell takes them: they set
the session's variables, and ``PS1`` is the PTY shell's prompt from then on (a client that sets its
own prompt works here as against bash). Running a line takes one keystroke service time; each
screen burst takes one screen-update time.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Awaitable, Callable, MutableMapping
from functools import lru_cache

from gateload.targets.reference.capacity import SimServer

PROMPT = b"gw$ "
EXIT = -1  # run_line's answer for `exit`
NOT_FOUND = 127
# Upper bounds for `screen`, so a typo cannot make the farm send gigabytes.
MAX_BURSTS = 10_000
MAX_BURST_BYTES = 1_000_000
MAX_VARIABLE_CHARS = 1024  # a session's variables stay small whatever a client sends
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# Printable, no '$' (clients wait for the prompt's '$'), no newline.
_PATTERN = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-+*#"


@lru_cache(maxsize=64)
def screen_burst(size: int) -> bytes:
    """``size`` printable bytes standing in for one screen update."""
    repeats = size // len(_PATTERN) + 1
    return (_PATTERN * repeats)[:size]


async def run_line(
    line: str,
    server: SimServer,
    write: Callable[[bytes], object],
    drain: Callable[[], Awaitable[None]],
    newline: bytes,
    variables: MutableMapping[str, str] | None = None,
) -> int:
    """Run one command line, writing its output; returns the exit status (or :data:`EXIT`).

    Assignments go into ``variables`` (the PTY session's; exec passes none and they are dropped).
    """
    words = line.split()
    if not words:
        return 0
    if _ASSIGNMENT.match(words[0]):
        return await _assign(line, server, write, newline, variables)
    cmd = words[0]
    if cmd == "exit":
        return EXIT
    if cmd == "screen":
        return await _screen(words, server, write, drain, newline)
    await server.work("keystroke")
    if cmd == "echo":
        write(" ".join(words[1:]).encode() + newline)
    elif cmd == "env":
        write(f"GATELOAD_SERVER={server.id}".encode() + newline)
    else:
        write(f"sh: {cmd}: not found".encode() + newline)
        return NOT_FOUND
    return 0


async def _assign(
    line: str,
    server: SimServer,
    write: Callable[[bytes], object],
    newline: bytes,
    variables: MutableMapping[str, str] | None,
) -> int:
    await server.work("keystroke")
    try:
        words = shlex.split(line)
    except ValueError:  # an unterminated quote
        write(b"sh: syntax error: unterminated quoted string" + newline)
        return 2
    if not all(_ASSIGNMENT.match(w) for w in words):
        write(b"sh: only plain assignments are supported here" + newline)
        return NOT_FOUND
    for word in words:
        name, _, value = word.partition("=")
        if variables is not None and len(value) <= MAX_VARIABLE_CHARS:
            variables[name] = value
    return 0


def prompt_of(variables: MutableMapping[str, str]) -> bytes:
    """The PTY prompt: ``PS1`` once a client set it, else :data:`PROMPT`."""
    ps1 = variables.get("PS1")
    return PROMPT if ps1 is None else ps1.encode(errors="replace")


async def _screen(
    words: list[str],
    server: SimServer,
    write: Callable[[bytes], object],
    drain: Callable[[], Awaitable[None]],
    newline: bytes,
) -> int:
    try:
        count, size = int(words[1]), int(words[2])
        if len(words) != 3 or not (0 < count <= MAX_BURSTS and 0 < size <= MAX_BURST_BYTES):
            raise ValueError
    except (IndexError, ValueError):
        write(f"usage: screen N B (1 <= N <= {MAX_BURSTS}, 1 <= B <= {MAX_BURST_BYTES})".encode() + newline)
        return 2
    burst = screen_burst(size) + newline
    for _ in range(count):
        await server.work("screen_update")
        write(burst)
        await drain()  # respect the SSH window, so a slow client bounds our buffers
    return 0
