"""Prompt handling and echo matching of the SSH shell operations (sshops.py), without a real sshd.

The byte strings are what Debian's bash 5.2, dash and zsh 5.9 sent to the harness over a real sshd
(tests/test_stock_shells.py runs against them): bash's bracketed paste and xterm title around its
prompt, zsh's PROMPT_SP line, keypad mode and its redraw of the second key of a line. Against the
in-process reference farm: its shell takes the harness's prompt-setting line as a real shell does.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest

from gateload.errors import InputError
from gateload.locustfiles.lib.sshops import (
    FIRST_PROMPT_QUIET_S,
    SET_PROMPT,
    ConnectSpec,
    GatewayConnection,
    _line_echo,
    ends_with_prompt,
    visible,
)
from gateload.locustfiles.lib.sshtyping import key_echo
from gateload.targets.profile import DEFAULT_FIRST_PROMPT, DEFAULT_SCREEN_COMMAND, Profile, load_profile
from gateload.targets.reference.farm import ReferenceFarm
from gateload.targets.reference.harness import write_profile_variant

BASH_PROMPT = b"\x1b[?2004h\x1b]0;gateload-bash@vm: ~\x07gateload-bash@vm:~$ "
ZSH_PROMPT = (
    b"\x1b[1m\x1b[7m%\x1b[27m\x1b[1m\x1b[0m" + b" " * 79 + b"\r \r\r\x1b[0m\x1b[27m\x1b[24m\x1b[Jvm% "
    b"\x1b[K\x1b[?1h\x1b=\x1b[?2004h"
)
TYPED = b"echo the quick brown fox"


@pytest.mark.parametrize(
    ("output", "is_prompt"),
    [
        (BASH_PROMPT, True),
        (ZSH_PROMPT, True),
        (b"$ ", True),  # dash
        (b"root@vm:~# ", True),
        (b"--- Type one of the keys in parentheses --- ", False),  # zsh's new-user menu
        (b"Last login: Thu Dec  3 06:00:00 2026\r\n", False),
        (b"gateload-bash@vm:~$ ls\r\n", False),
        (b"it costs 5 $ \nmore\n", False),  # "$ " at the end of an earlier line is no prompt
        (b"menu> ", True),
    ],
)
def test_default_first_prompt_on_what_shells_print(output: bytes, is_prompt: bool) -> None:
    pattern = re.compile(DEFAULT_FIRST_PROMPT.encode(), re.MULTILINE)
    assert ends_with_prompt(pattern, visible(output)) is is_prompt


def test_visible_strips_csi_osc_and_two_byte_escapes() -> None:
    assert visible(BASH_PROMPT) == b"gateload-bash@vm:~$ "
    assert visible(ZSH_PROMPT).endswith(b"\r \r\rvm% ")


@pytest.mark.parametrize(
    ("key", "received", "echo"),
    [
        (b"c", b"c", b"c"),
        (b"c", b"\x08ec", b"\x08ec"),  # zsh redraws the first key with the second
        (b"h", b"\x1b[K\x1b[?1h\x1b=\x1b[?2004hh", b"\x1b[K\x1b[?1h\x1b=\x1b[?2004hh"),  # 'h' ends escapes
        (b"x", b"x\x1b[?2004l", b"x"),  # what follows the key stays for the next read
    ],
)
def test_keystroke_echo_tolerates_line_editor_output(key: bytes, received: bytes, echo: bytes) -> None:
    match = key_echo(key[0], TYPED + b"x").search(received)
    assert match is not None and match.group() == echo and match.group().endswith(key)


def test_keystroke_echo_stops_at_unexpected_output_and_waits_for_split_escapes() -> None:
    pattern = key_echo(ord("c"), TYPED)
    junk = pattern.search(b"\x1b[KZc")
    assert junk is not None and junk.group() == b"\x1b[KZ"  # "Z" was not typed: unexpected
    assert pattern.search(b"\x1b[?20") is None  # an escape cut by a read: wait for the rest
    assert pattern.search(b"eh") is None  # redraws only: the key has not come yet


@pytest.mark.parametrize(
    "received",
    [
        b"printf x",  # dash: as typed
        b"p\x08printf x",  # zsh: redraw
        b"\x1b[?2004hprin\rtf x",  # bash: a wrapped line
    ],
)
def test_line_echo_is_complete_when_every_byte_came_in_order(received: bytes) -> None:
    pattern = _line_echo(b"printf x")
    assert pattern.search(received) is not None
    assert pattern.search(received[:-1]) is None


def test_set_prompt_line_never_echoes_as_its_prompt() -> None:
    line = SET_PROMPT.format(token="gl-1a2b3c4d").encode()
    assert b"[gl-1a2b3c4d]$ " not in line  # the quotes split it in the echo
    assert line.startswith(b"PS1='[gl-1a2b3c4d]''$ ' ")
    words = shlex.split(line.decode())  # as a POSIX shell splits it: assignments only
    assert words[0] == "PS1=[gl-1a2b3c4d]$ " and all(re.match(r"[A-Z0-9_]+=", w) for w in words)


# --- against the reference farm's shell -------------------------------------------------------------


def _farm_account(farm: ReferenceFarm) -> tuple[str, str]:
    account = next(iter(farm.state.accounts.values()))
    return account.username, account.password


def _spec(farm: ReferenceFarm, **kw: object) -> ConnectSpec:
    username, password = _farm_account(farm)
    return ConnectSpec("127.0.0.1", farm.gateway_port, username, password, verify_host_key=False, **kw)  # type: ignore[arg-type]


def test_reference_shell_takes_the_prompt_setting_line(fast_profile: Callable[..., Profile]) -> None:
    profile = fast_profile(farm__static_credentials=True)

    async def scenario() -> tuple[bytes, list[bool], bool, int, int]:
        async with ReferenceFarm(profile, seed=3) as farm:
            conn = GatewayConnection(_spec(farm))  # no fixed prompt: detect "gw$ ", then set one
            await conn.connect()
            await asyncio.wait_for(conn.open_shell(), 10)
            keys = await conn.type_burst(b"echo hi", 0.0, 5)
            enter = await conn.run_line(b"", 5)
            screen = await conn.run_line(b"screen 2 100", 5)
            served = sum(s["served"]["keystroke"] for s in farm.metrics_snapshot()["servers"].values())
            await conn.close()
            return conn.prompt, [k.outcome.ok for k in keys], enter.ok, screen.value or 0, served

    prompt, keys_ok, enter_ok, screen_bytes, served = asyncio.run(scenario())
    assert prompt.startswith(b"[gl-") and prompt.endswith(b"]$ ") and prompt != b"gw$ "
    assert keys_ok == [True] * len("echo hi") and enter_ok
    assert screen_bytes >= 2 * 100 + len(prompt)  # the screen bursts came, then the new prompt
    setup = len(SET_PROMPT.format(token="gl-00000000")) + 1  # echoed keys + running the line
    assert served >= setup + len("echo hi") + len("screen 2 100")  # the capacity model charged them all


def test_unknown_first_prompt_falls_back_to_a_quiet_period(fast_profile: Callable[..., Profile]) -> None:
    profile = fast_profile(farm__static_credentials=True)

    async def scenario() -> tuple[float, float, bytes]:
        async with ReferenceFarm(profile, seed=5) as farm:
            timings = []
            for regex in (DEFAULT_FIRST_PROMPT, r"no such prompt \d{9}"):
                conn = GatewayConnection(_spec(farm, first_prompt=regex))
                await conn.connect()
                t0 = time.perf_counter()
                await asyncio.wait_for(conn.open_shell(), 10)
                timings.append(time.perf_counter() - t0)
                await conn.close()
            return timings[0], timings[1], conn.prompt

    known, quiet, prompt = asyncio.run(scenario())
    assert prompt.startswith(b"[gl-")  # the shell was ready all the same
    assert quiet >= FIRST_PROMPT_QUIET_S > known  # it waited for the quiet period, and only then


def test_fixed_prompt_sends_no_setup_line(fast_profile: Callable[..., Profile]) -> None:
    profile = fast_profile(farm__static_credentials=True)

    async def scenario() -> tuple[bytes, int]:
        async with ReferenceFarm(profile, seed=7) as farm:
            conn = GatewayConnection(_spec(farm, prompt=b"gw$ "))
            await conn.connect()
            await asyncio.wait_for(conn.open_shell(), 10)
            served = sum(s["served"]["keystroke"] for s in farm.metrics_snapshot()["servers"].values())
            await conn.close()
            return conn.prompt, served

    prompt, served = asyncio.run(scenario())
    assert (prompt, served) == (b"gw$ ", 0)


# --- profile keys ---------------------------------------------------------------------------------


def test_profile_shell_keys_and_their_checks(tmp_path: Path) -> None:
    real = load_profile(Path(__file__).resolve().parent.parent / "targets/profiles/local-real.toml")
    assert (real.gateway.prompt, real.gateway.screen_command) == ("", DEFAULT_SCREEN_COMMAND)
    for name in ("reference-before", "reference-after"):
        ref = load_profile(Path(__file__).resolve().parent.parent / f"targets/profiles/{name}.toml")
        assert (ref.gateway.prompt, ref.gateway.screen_command) == ("gw$ ", "screen {bursts} {bytes}")
    bad = {
        "gateway.first_prompt": ("[$#", "not a regular expression"),
        "gateway.screen_command": ("screen {burst} {bytes}", "placeholders are {bursts} and {bytes}"),
        "gateway.prompt": ("  ", "only blanks"),
    }
    for i, (key, (value, problem)) in enumerate(bad.items()):
        with pytest.raises(InputError) as err:  # the variant is validated as it is written
            write_profile_variant("reference-before", tmp_path / f"bad-{i}.toml", {key: value})
        message = str(err.value)
        assert key in message and problem in message and "\n" not in message


def test_reference_shell_assignments_in_pty_and_exec(fast_profile: Callable[..., Profile]) -> None:
    profile = fast_profile(farm__static_credentials=True)

    async def scenario() -> tuple[bytes, bytes, bytes, int, int]:
        async with ReferenceFarm(profile, seed=9) as farm:
            username, password = _farm_account(farm)
            options = {"known_hosts": None, "client_keys": None, "agent_path": None, "config": None}
            async with asyncssh.connect(
                "127.0.0.1", farm.gateway_port, username=username, password=password, **options
            ) as conn:
                proc = await conn.create_process(term_type="xterm", encoding=None)

                async def until(marker: bytes) -> bytes:
                    return await asyncio.wait_for(proc.stdout.readuntil(marker), 10)

                await until(b"gw$ ")
                proc.stdin.write(b"PS1='[x]''$ ' PROMPT_COMMAND= RPS1=\r")
                set_prompt = await until(b"[x]$ ")
                proc.stdin.write(b"A='open\r")
                unterminated = await until(b"[x]$ ")
                proc.stdin.write(b"A=1 echo hi\r")
                mixed = await until(b"[x]$ ")
                ok = (await conn.run("PS1='y$ '")).exit_status or 0
                bad = (await conn.run("A='open")).exit_status or 0
                proc.stdin.write(b"exit\r")
                await asyncio.wait_for(proc.wait(), 5)
            return set_prompt, unterminated, mixed, ok, bad

    set_prompt, unterminated, mixed, ok, bad = asyncio.run(scenario())
    assert set_prompt.endswith(b"\r\n[x]$ ") and b"gw$ " not in set_prompt
    assert b"sh: syntax error: unterminated quoted string\r\n" in unterminated
    assert b"only plain assignments" in mixed  # a command after assignments is not run
    assert (ok, bad) == (0, 2)  # exec takes the line too, and drops the variables
