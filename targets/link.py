"""Homeoffice link emulation: an asyncio TCP proxy with delay, jitter, bandwidth and loss-as-reset.

This kernel has no ``tc netem``, so the link an employee works over (DSL, LTE, fibre) is emulated in
user space by a proxy between the load generator and the target. Each direction is a **delay line**:
a chunk read at time ``t`` is first serialised at the link rate (a token bucket whose bucket is one
chunk: ``free_at = max(t, free_at) + bytes / rate``), then released ``delay ± jitter`` later. Release
times are computed from timestamps, not by sleeping per chunk in series, so delay does not add up
with throughput: a stream of chunks each arrives ``delay`` after it was sent. Releases stay in order
(TCP never reorders), so jitter widens gaps but never swaps chunks.

Loss shows to a TCP user as stalls or, at worst, a connection reset; the proxy emulates the reset:
with probability ``loss_reset_pct`` a connection (or, in ``reset_mode="chunk"``, each chunk) is reset
with a real RST on both sides.

Known limits: the TCP handshake itself is not delayed (the local kernel completes ``connect()``), so a
new connection costs one round trip less than on the real link; everything after it is delayed.

Presets (one-way delay, jitter, down/up rate). Typical values, not measurements of the city's links;
for a defensible run, measure the employees' links (ping RTT/2, a speed test) and use ``custom``:

- ``fibre``: 5 ms ± 0.5 ms, 250/100 Mbit/s. FTTH round trips of ~10 ms to the first measurement
  server are what the FCC "Measuring Broadband America" fixed reports show for fibre (their
  lowest-latency technology); 250/100 is a common FTTH tier.
- ``dsl``: 12.5 ms ± 2 ms, 50/10 Mbit/s. VDSL2 "50" (the common German homeoffice line) with
  interleaving off; the MBA reports put DSL round trips around 25 ms and above, the highest of the
  wired technologies.
- ``lte``: 25 ms ± 8 ms, 20/5 Mbit/s, 0.5 % of connections reset. Round trips of 40-60 ms and far
  more jitter than wired lines are what Ookla/OpenSignal LTE reports show; the reset rate stands for
  radio handovers and carrier-grade NAT timeouts and is an assumption, not a measured figure.

Usage from Locust (gevent) code, where the proxies need their own real thread::

    linked = link_profile(profile)          # no-op when profile.link.preset == "none"
    profile = linked.profile                # portal URL and gateway address point at the proxies
    ...
    linked.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import socket as _stdlib_socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from gateload import paths
from gateload.targets.profile import Link, Profile

CHUNK_MAX = 64 * 1024
TIMER_HALF_TICK_S = 0.0005
QUEUE_CHUNKS = 256  # per direction: bounds memory; a full queue stops reading (back-pressure)


@dataclass(frozen=True)
class LinkSpec:
    """What one emulated link does; rates per direction (0 = unlimited)."""

    delay_ms: float = 0.0  # one-way, each direction
    jitter_ms: float = 0.0  # uniform in [-jitter, +jitter], as netem's `delay D J`
    down_kbit: float = 0.0  # target -> user
    up_kbit: float = 0.0  # user -> target
    loss_reset_pct: float = 0.0

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms", "down_kbit", "up_kbit", "loss_reset_pct"):
            if getattr(self, name) < 0:
                raise ValueError(f"link {name} must be >= 0")
        if self.loss_reset_pct > 100:
            raise ValueError("link loss_reset_pct must be <= 100")


PRESETS: dict[str, LinkSpec] = {
    "fibre": LinkSpec(delay_ms=5.0, jitter_ms=0.5, down_kbit=250_000, up_kbit=100_000),
    "dsl": LinkSpec(delay_ms=12.5, jitter_ms=2.0, down_kbit=50_000, up_kbit=10_000),
    "lte": LinkSpec(delay_ms=25.0, jitter_ms=8.0, down_kbit=20_000, up_kbit=5_000, loss_reset_pct=0.5),
}


def link_spec(link: Link) -> LinkSpec | None:
    """The emulated link a profile's ``[link]`` asks for; ``None`` for ``preset = "none"``.

    With a preset, any non-zero field of ``[link]`` overrides the preset's value (``bandwidth_kbit``
    sets both directions), so ``preset = "dsl"`` plus ``delay_ms = 30`` is a slow DSL line.
    """
    if link.preset == "none":
        return None
    base = LinkSpec() if link.preset == "custom" else PRESETS[link.preset]
    changes: dict[str, float] = {}
    if link.delay_ms or link.preset == "custom":
        changes["delay_ms"] = link.delay_ms
    if link.jitter_ms or link.preset == "custom":
        changes["jitter_ms"] = link.jitter_ms
    if link.bandwidth_kbit or link.preset == "custom":
        changes["down_kbit"] = changes["up_kbit"] = link.bandwidth_kbit
    if link.loss_reset_pct or link.preset == "custom":
        changes["loss_reset_pct"] = link.loss_reset_pct
    return dataclasses.replace(base, **changes)


# --- one direction of the link: a delay line --------------------------------------------------------


class DelayLine:
    """Computes when each chunk leaves the link: serialisation at the rate, then delay ± jitter."""

    def __init__(self, delay_s: float, jitter_s: float, kbit: float, rng: random.Random) -> None:
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.bytes_per_s = kbit * 1000 / 8 if kbit else 0.0
        self.rng = rng
        self._free_at = 0.0  # when the link has finished serialising what it already took
        self._last_release = 0.0

    def release_time(self, nbytes: int, now: float) -> float:
        """Time (loop clock) at which a chunk of ``nbytes`` read at ``now`` is delivered."""
        start = max(now, self._free_at)
        self._free_at = start + (nbytes / self.bytes_per_s if self.bytes_per_s else 0.0)
        delay = self.delay_s
        if self.jitter_s:
            delay = max(0.0, delay + self.rng.uniform(-self.jitter_s, self.jitter_s))
        # In order, as TCP delivers: a chunk never overtakes the one before it.
        self._last_release = max(self._free_at + delay, self._last_release)
        return self._last_release

    def chunk_size(self) -> int:
        """Read size: about 5 ms of link time when rate-limited, so shaping is smooth, not lumpy."""
        if not self.bytes_per_s:
            return CHUNK_MAX
        return int(min(CHUNK_MAX, max(1460, self.bytes_per_s * 0.005)))


@dataclass
class LinkStats:
    """Counters of one proxy (read them from the proxy's loop or after it stopped)."""

    connections: int = 0
    resets: int = 0  # connections reset by the loss emulation
    upstream_failures: int = 0  # connections the target refused
    bytes_up: int = 0
    bytes_down: int = 0
    releases: int = 0  # chunks (and EOFs) the delay line released
    late_s: float = 0.0  # summed: how much later than its release time each one was written

    def mean_late_ms(self) -> float:
        """How late the delay line released a chunk on average (a timer is late, never early)."""
        return 1000.0 * self.late_s / self.releases if self.releases else 0.0


_EOF = b""


class _Reset(Exception):
    """The loss emulation decided to reset this connection."""


# --- the proxy ----------------------------------------------------------------------------------------


class LinkProxy:
    """A TCP proxy that emulates a link between ``listen`` and ``upstream``.

    ``await start()`` binds (port 0 picks a free one; read ``.address``), ``await stop()`` closes the
    listener and every open connection. ``reset_mode`` decides what ``loss_reset_pct`` applies to:
    each connection (it is reset at its first chunk) or each chunk.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        spec: LinkSpec | Link,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        *,
        reset_mode: Literal["connection", "chunk"] = "connection",
        seed: int | None = None,
    ) -> None:
        self.upstream = upstream
        # A profile's [link] works too; preset "none" is a plain, undelayed proxy.
        self.spec = (link_spec(spec) or LinkSpec()) if isinstance(spec, Link) else spec
        self.listen = listen
        self.reset_mode = reset_mode
        self.rng = random.Random(seed)
        self.stats = LinkStats()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._listen_sock: _stdlib_socket.socket | None = None
        self._upstream_addr: tuple[int, tuple[Any, ...]] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where users connect: the bound listen address."""
        sock = self._listen_sock
        if sock is None:
            raise RuntimeError("LinkProxy is not started")
        host, port = sock.getsockname()[:2]
        return host, port

    def bind(self) -> None:
        """Resolve the upstream, bind and listen now (any thread); ``start`` then serves."""
        if self._listen_sock is None:
            self._upstream_addr = _resolve(self.upstream)
            self._listen_sock = _bound_socket(self.listen)

    async def start(self) -> LinkProxy:
        self.bind()
        self._server = await asyncio.start_server(self._serve, sock=self._listen_sock, limit=CHUNK_MAX)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listen_sock is not None:
            self._listen_sock.close()

    async def __aenter__(self) -> LinkProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _roll(self) -> bool:
        return self.spec.loss_reset_pct > 0 and self.rng.random() * 100 < self.spec.loss_reset_pct

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        _no_delay(c_writer.get_extra_info("socket"))
        try:
            await self._pipe(c_reader, c_writer)
        except asyncio.CancelledError:
            # stop() cancels open connections; ending normally keeps asyncio's stream callback
            # (Python 3.11) from logging the cancellation as an error.
            pass
        finally:
            self._tasks.discard(task)

    async def _pipe(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            assert self._upstream_addr is not None  # bind() ran in start()
            u_reader, u_writer = await _open_upstream(*self._upstream_addr)
        except OSError:
            self.stats.upstream_failures += 1
            _abort(c_writer)
            return
        doomed = self.reset_mode == "connection" and self._roll()
        state = _ConnState(doomed=doomed)
        loop = asyncio.get_running_loop()
        up = DelayLine(self.spec.delay_ms / 1000, self.spec.jitter_ms / 1000, self.spec.up_kbit, self.rng)
        down = DelayLine(self.spec.delay_ms / 1000, self.spec.jitter_ms / 1000, self.spec.down_kbit, self.rng)
        pumps = [
            loop.create_task(self._direction(c_reader, u_writer, up, state, "up")),
            loop.create_task(self._direction(u_reader, c_writer, down, state, "down")),
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in done if t.exception() is not None]
            if failed:
                if isinstance(failed[0].exception(), _Reset):
                    self.stats.resets += 1
                _abort(c_writer)
                _abort(u_writer)
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for task in pumps:
                task.cancel()
            for writer in (c_writer, u_writer):
                writer.close()

    async def _direction(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        line: DelayLine,
        state: _ConnState,
        name: str,
    ) -> None:
        """Read, timestamp and queue chunks; a second task delivers them at their release time."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()
        sender = loop.create_task(_deliver(queue, writer, self.stats))
        try:
            while True:
                data = await reader.read(line.chunk_size())
                if data and (state.doomed or (self.reset_mode == "chunk" and self._roll())):
                    raise _Reset()
                await queue.put((line.release_time(len(data), loop.time()), data))
                if name == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                if not data:
                    break
                if sender.done():
                    break
            await sender
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await sender


@dataclass
class _ConnState:
    doomed: bool = False


async def _deliver(
    queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, stats: LinkStats
) -> None:
    """Write each chunk when its release time comes; EOF becomes a half-close (FIN), also delayed."""
    loop = asyncio.get_running_loop()
    while True:
        release, data = await queue.get()
        # The epoll selector rounds timeouts up to whole milliseconds, so a timer fires 0-1 ms late;
        # waking half a tick early centres that error on zero instead of adding 0.5 ms per direction.
        wait = release - loop.time() - TIMER_HALF_TICK_S
        if wait > 0:
            await asyncio.sleep(wait)
        stats.releases += 1
        stats.late_s += max(0.0, loop.time() - release)
        if data is _EOF or not data:
            if writer.can_write_eof():
                writer.write_eof()
            return
        writer.write(data)
        await writer.drain()


# --- sockets that work with and without gevent's monkey-patching ---------------------------------


def _socket_class() -> Any:
    """The unpatched socket class: under Locust, gevent has replaced ``socket.socket``."""
    if "gevent.monkey" in sys.modules:
        from gevent import monkey

        if monkey.is_module_patched("socket"):
            return monkey.get_original("socket", "socket")
    return _stdlib_socket.socket


def _bound_socket(address: tuple[str, int]) -> _stdlib_socket.socket:
    host, port = address
    family = _stdlib_socket.AF_INET6 if ":" in host else _stdlib_socket.AF_INET
    sock = _socket_class()(family, _stdlib_socket.SOCK_STREAM)
    sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _resolve(address: tuple[str, int]) -> tuple[int, tuple[Any, ...]]:
    """(family, sockaddr) of the upstream, resolved once in the caller's thread.

    Not ``loop.getaddrinfo``: it runs in the loop's default executor, whose workers are greenlets under
    gevent's patching and never run in the proxy's own thread (the proxy would hang).
    """
    host, port = address
    family, _, _, _, sockaddr = _stdlib_socket.getaddrinfo(host, port, type=_stdlib_socket.SOCK_STREAM)[0]
    return family, sockaddr


async def _open_upstream(
    family: int, sockaddr: tuple[Any, ...]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    sock = _socket_class()(family, _stdlib_socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, sockaddr)
    except BaseException:
        sock.close()
        raise
    _no_delay(sock)
    return await asyncio.open_connection(sock=sock, limit=CHUNK_MAX)


def _no_delay(sock: Any) -> None:
    """Forward each chunk at once: Nagle's algorithm in the proxy would add delay the link lacks."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a reset by the network shows to the endpoint."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --- running proxies in their own OS thread (for Locust and other blocking callers) -------------------


class LinkThread:
    """An asyncio loop in a real OS thread that serves :class:`LinkProxy` objects.

    Under gevent (Locust), the thread and its selector are the unpatched originals, so the delay line's
    timers run on real time and not on the gevent hub.
    """

    def __init__(self) -> None:
        selectors_mod, start_thread, lock_type = _originals()
        self._loop = asyncio.SelectorEventLoop(selectors_mod.DefaultSelector())
        self._start_thread = start_thread
        self._stopped = lock_type()
        self._stopped.acquire()
        self._proxies: list[LinkProxy] = []
        self._running = False

    def add(self, proxy: LinkProxy) -> tuple[str, int]:
        """Bind ``proxy`` now and serve it on this thread's loop; returns its listen address."""
        proxy.bind()
        self._proxies.append(proxy)
        if self._running:
            asyncio.run_coroutine_threadsafe(proxy.start(), self._loop)
        return proxy.address

    def start(self) -> LinkThread:
        """Start the thread; proxies already added start serving (the listen backlog holds clients)."""
        self._running = True
        self._start_thread(self._run, ())
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        raise_priority(_native_thread_id())
        try:
            for proxy in self._proxies:
                self._loop.run_until_complete(proxy.start())
            self._loop.run_forever()
            for proxy in self._proxies:
                self._loop.run_until_complete(proxy.stop())
        finally:
            self._loop.close()
            self._stopped.release()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every proxy and the thread; waits for it (bounded)."""
        if not self._running:
            return
        self._running = False
        self._loop.call_soon_threadsafe(self._loop.stop)
        if not self._stopped.acquire(timeout=timeout_s):
            raise RuntimeError("link proxy thread did not stop")

    @property
    def proxies(self) -> list[LinkProxy]:
        return list(self._proxies)


LINK_NICE = -10  # the delay line's timers must not wait behind a CPU-bound load generator


def raise_priority(who: int = 0) -> bool:
    """Give a thread (Linux: its native id) or, with 0, this process a higher CPU priority.

    The proxy needs little CPU but needs it on time: on a saturated machine a late wake-up is added
    to the emulated delay. Needs root (CAP_SYS_NICE); without it the priority stays and False returns.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, who, LINK_NICE)
    except (OSError, AttributeError):
        return False
    return True


def _native_thread_id() -> int:
    import threading

    # Under gevent, threading.get_native_id is still the OS call; 0 (the process) as a fallback.
    return threading.get_native_id() if hasattr(threading, "get_native_id") else 0


def _originals() -> tuple[Any, Any, Any]:
    """selectors, start_new_thread and a lock type that gevent has not patched."""
    import _thread
    import selectors

    if "gevent.monkey" in sys.modules:
        from gevent import monkey

        if monkey.is_module_patched("threading"):
            return (
                _Module(monkey.get_original("selectors", "DefaultSelector")),
                monkey.get_original("_thread", "start_new_thread"),
                monkey.get_original("_thread", "allocate_lock"),
            )
    return selectors, _thread.start_new_thread, _thread.allocate_lock


@dataclass(frozen=True)
class _Module:
    DefaultSelector: Any


# --- the profile-level entry point ------------------------------------------------------------------

Routes = dict[str, tuple[str, int]]  # name ("portal", "gateway") -> address
LINK_PROCESS_MODULE = "gateload.targets.linkproc"  # the child's module, run by name: it imports this one
STOP_TIMEOUT_S = 10.0


@dataclass
class LinkedProfile:
    """A profile whose portal and gateway addresses point at link proxies, and how to stop them.

    After :meth:`stop`, :attr:`stats` holds each proxy's counters (connections, resets, bytes).
    """

    profile: Profile
    spec: LinkSpec | None
    _stop: Callable[[], dict[str, LinkStats]] | None = None
    stats: dict[str, LinkStats] = field(default_factory=dict)

    def stop(self) -> None:
        stop, self._stop = self._stop, None
        if stop is not None:
            self.stats = stop()

    def __enter__(self) -> LinkedProfile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(
    routes: Routes, spec: LinkSpec, *, listen_host: str = "127.0.0.1", seed: int | None = None
) -> tuple[Routes, Callable[[], dict[str, LinkStats]]]:
    """Proxies for ``routes`` in a thread of this process: their addresses and a stop function."""
    thread = LinkThread()
    proxies = {name: LinkProxy(up, spec, (listen_host, 0), seed=seed) for name, up in routes.items()}
    addresses = {name: thread.add(proxy) for name, proxy in proxies.items()}
    thread.start()

    def stop() -> dict[str, LinkStats]:
        thread.stop()
        return {name: proxy.stats for name, proxy in proxies.items()}

    return addresses, stop


def serve_in_process(
    routes: Routes, spec: LinkSpec, *, listen_host: str = "127.0.0.1", seed: int | None = None
) -> tuple[Routes, Callable[[], dict[str, LinkStats]]]:
    """Proxies for ``routes`` in a child process (``gateload.targets.linkproc``): their addresses and a stop
    function (returns their stats)."""
    argv = [sys.executable, "-m", LINK_PROCESS_MODULE, "--spec", json.dumps(dataclasses.asdict(spec))]
    argv += ["--listen-host", listen_host]
    if seed is not None:
        argv += ["--seed", str(seed)]
    for name, (host, port) in routes.items():
        argv += ["--route", f"{name}={host}:{port}"]
    fd, log_name = tempfile.mkstemp(prefix="gateload-link-", suffix=".log")
    log = Path(log_name)
    with os.fdopen(fd, "wb") as stderr:
        proc = subprocess.Popen(
            argv,
            cwd=paths.IMPORT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(STOP_TIMEOUT_S)
        message = log.read_text(errors="replace")[-2000:]
        log.unlink(missing_ok=True)
        raise RuntimeError(f"link proxy process failed: {message}")
    addresses = {name: (host, int(port)) for name, (host, port) in json.loads(line)["routes"].items()}

    def stop() -> dict[str, LinkStats]:
        try:  # communicate() closes the child's stdin first: its signal to stop
            out, _ = proc.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        finally:
            log.unlink(missing_ok=True)
        stats = json.loads(out.splitlines()[-1]).get("stats", {}) if out.strip() else {}
        return {name: LinkStats(**values) for name, values in stats.items()}

    return addresses, stop


def link_profile(
    profile: Profile,
    *,
    listen_host: str = "127.0.0.1",
    seed: int | None = None,
    isolation: Literal["process", "thread"] = "process",
) -> LinkedProfile:
    """Put emulated links in front of the profile's portal and gateway, as its ``[link]`` says.

    Returns the rewritten profile (portal URL and gateway host/port now name local proxies) and a
    ``stop()``. With ``preset = "none"`` nothing starts and the profile comes back unchanged.

    ``isolation="process"`` (the default) runs the proxies in a child process, so their timers do not
    compete for the GIL with the load generator (in-process, a busy Locust process adds up to ~1 ms
    per round trip); ``"thread"`` runs them in a real OS thread of this process. Both are safe to
    call from Locust (gevent) code. The child ends when this process closes its stdin or dies.

    TLS note: the portal URL's host becomes ``listen_host``; a portal certificate must name it (the
    local test CA names 127.0.0.1), or certificate verification fails, as it should.
    """
    spec = link_spec(profile.link)
    if spec is None:
        return LinkedProfile(profile, None)
    url = urlsplit(profile.portal.url)
    assert url.hostname is not None and url.port is not None  # load_profile checked it
    routes = {"portal": (url.hostname, url.port), "gateway": (profile.gateway.host, profile.gateway.port)}
    if isolation == "thread":
        addresses, stop = serve_in_thread(routes, spec, listen_host=listen_host, seed=seed)
    else:
        addresses, stop = serve_in_process(routes, spec, listen_host=listen_host, seed=seed)
    p_host, p_port = addresses["portal"]
    g_host, g_port = addresses["gateway"]
    netloc_host = f"[{p_host}]" if ":" in p_host else p_host
    new_url = urlunsplit((url.scheme, f"{netloc_host}:{p_port}", url.path, url.query, url.fragment))
    # The rewritten profile already goes through the link: it must not ask for a second one.
    linked = dataclasses.replace(
        profile,
        portal=dataclasses.replace(profile.portal, url=new_url),
        gateway=dataclasses.replace(profile.gateway, host=g_host, port=g_port),
        link=Link(),
    )
    return LinkedProfile(linked, spec, stop)
