"""The capacity model (slots, FIFO queue, admission, balancer, service times) and gateway tickets."""

from __future__ import annotations

import asyncio
import base64
import random
import statistics

import pytest

from gateload.targets.profile import Farm, ServerGroup, ServiceTimes
from gateload.targets.reference.capacity import Cluster, SimServer, make_sampler
from gateload.targets.reference.tickets import TicketBook

ROUND_S = 0.05  # one service time in the parallel-slots test
CLOCK_S = 0.001  # asyncio may fire a timer up to its clock resolution early; 1 ms covers it with room


def _server(workers: int = 1, queue_limit: int = 10, max_sessions: int = 5, speed: float = 1.0) -> SimServer:
    group = ServerGroup(
        "t", 1, workers=workers, max_sessions=max_sessions, queue_limit=queue_limit, speed=speed
    )
    return SimServer(
        "t-01", group, ServiceTimes(distribution="constant"), make_sampler("constant", random.Random(1))
    )


def test_one_worker_serves_fifo_and_counts_the_queue() -> None:
    async def scenario() -> tuple[list[str], int, int]:
        server = _server(workers=1)
        done: list[str] = []

        async def op(name: str) -> None:
            await server.work("keystroke", 0.01)
            done.append(name)

        tasks = [asyncio.create_task(op(n)) for n in "abcd"]
        await asyncio.sleep(0)  # let all four reach the server
        depth, busy = server.queue_depth, server.busy
        await asyncio.gather(*tasks)
        return done, depth, busy

    done, depth, busy = asyncio.run(scenario())
    assert done == list("abcd")
    assert (busy, depth) == (1, 3)


def test_workers_serve_in_parallel_and_busy_time_adds_up() -> None:
    async def scenario() -> tuple[float, tuple[int, int], SimServer]:
        server = _server(workers=4)
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = [asyncio.create_task(server.work("screen_update", ROUND_S)) for _ in range(8)]
        await asyncio.sleep(0)  # let all eight reach the server
        first = (server.busy, server.queue_depth)
        await asyncio.gather(*tasks)
        return loop.time() - start, first, server

    elapsed, first, server = asyncio.run(scenario())
    print(f"8 ops on 4 slots: {elapsed:.4f} s, busy {server.busy_s:.4f} s")
    # 8 ops of 50 ms on 4 slots: four served at once and four waiting (not one slot per op, not an
    # off-by-one), counted without a clock; so two rounds: at least 100 ms (timers are never early),
    # and less than the 400 ms a serial server would need at the least, however late this machine's
    # timers fire (a wall-clock window here failed beside other work: one 50 ms round took 83 ms).
    assert first == (4, 4)
    assert 2 * ROUND_S - CLOCK_S <= elapsed < 8 * ROUND_S, elapsed
    assert server.served["screen_update"] == 8
    # slot time: at least 8 x 50 ms, and never more than 4 slots held for the whole run (double counting,
    # or counting the queue wait as service, would exceed it)
    assert 8 * ROUND_S - CLOCK_S <= server.busy_s <= 4 * elapsed + CLOCK_S, (server.busy_s, elapsed)
    assert (server.busy, server.queue_depth) == (0, 0)


def test_admission_refuses_beyond_the_queue_limit() -> None:
    async def scenario() -> SimServer:
        server = _server(workers=1, queue_limit=2)
        tasks = [asyncio.create_task(server.work("portal_page", 0.05)) for _ in range(3)]
        await asyncio.sleep(0)
        assert server.queue_depth == 2 and not server.has_room()
        assert not server.try_admit("portal")
        await asyncio.gather(*tasks)
        assert server.has_room() and server.try_admit("portal")
        return server

    server = asyncio.run(scenario())
    assert server.refused == {"portal": 1, "ssh": 0}


def test_queue_limit_zero_means_no_waiting() -> None:
    async def scenario() -> bool:
        server = _server(workers=1, queue_limit=0)
        task = asyncio.create_task(server.work("portal_page", 0.02))
        await asyncio.sleep(0)
        room = server.has_room()
        await task
        return room

    assert asyncio.run(scenario()) is False


def test_cancelled_waiter_leaves_the_queue_and_the_slot_moves_on() -> None:
    async def scenario() -> list[str]:
        server = _server(workers=1)
        done: list[str] = []

        async def op(name: str) -> None:
            await server.work("keystroke", 0.02)
            done.append(name)

        a, b, c = (asyncio.create_task(op(n)) for n in "abc")
        await asyncio.sleep(0)
        b.cancel()
        await asyncio.gather(a, c, return_exceptions=True)
        assert b.cancelled()
        assert (server.busy, server.queue_depth) == (0, 0)
        return done

    assert asyncio.run(scenario()) == ["a", "c"]


def test_ssh_sessions_are_capped() -> None:
    server = _server(max_sessions=2)
    assert server.try_open_ssh_session() and server.try_open_ssh_session()
    assert not server.try_open_ssh_session()
    assert server.ssh_sessions == 2 and server.refused["ssh"] == 1
    server.close_ssh_session()
    assert server.try_open_ssh_session()


@pytest.mark.parametrize("distribution", ["exponential", "lognormal", "constant"])
def test_sampler_mean(distribution: str) -> None:
    sample = make_sampler(distribution, random.Random(42))
    draws = [sample(0.02) for _ in range(40_000)]
    assert statistics.fmean(draws) == pytest.approx(0.02, rel=0.03)
    assert min(draws) > 0


def test_speed_divides_service_time_and_bytes_use_the_rate() -> None:
    fast = _server(speed=2.0)
    slow = _server(speed=1.0)
    # constant distribution: exactly the mean; ServiceTimes default keystroke_ms = 1.0
    assert slow.service_time("keystroke") == pytest.approx(0.001)
    assert fast.service_time("keystroke") == pytest.approx(0.0005)
    # 50 MB/s default: 1 MB takes 20 ms at speed 1, 10 ms at speed 2
    assert slow.service_time("sftp", 1_000_000) == pytest.approx(0.02)
    assert fast.service_time("document", 1_000_000) == pytest.approx(0.01)


def _farm(balancer: str, count: int = 3) -> Farm:
    return Farm(
        servers=[ServerGroup("s", count, workers=1, max_sessions=10, queue_limit=5)], balancer=balancer
    )  # type: ignore[arg-type]


def test_round_robin_cycles_through_every_server() -> None:
    cluster = Cluster(_farm("round-robin"))
    assert [cluster.pick("portal").id for _ in range(6)] == ["s-01", "s-02", "s-03"] * 2


def test_portal_and_ssh_have_their_own_round_robin_cursor() -> None:
    cluster = Cluster(_farm("round-robin", count=2))
    # one portal request, then one SSH connection per session: each service still alternates
    picks = [(cluster.pick("portal").id, cluster.pick("ssh").id) for _ in range(4)]
    assert picks == [("s-01", "s-01"), ("s-02", "s-02")] * 2


def test_least_connections_prefers_the_emptiest_server() -> None:
    cluster = Cluster(_farm("least-connections"))
    s1, s2, s3 = cluster.servers
    s1.ssh_sessions, s2.ssh_sessions, s3.portal_sessions = 3, 1, 2
    assert {cluster.pick("ssh").id for _ in range(5)} == {"s-02"}
    s2.ssh_sessions = 5
    assert cluster.pick("ssh").id == "s-03"
    # ties rotate, so an idle farm still spreads sessions
    idle = Cluster(_farm("least-connections"))
    assert {idle.pick("portal").id for _ in range(3)} == {"s-01", "s-02", "s-03"}


# --- tickets ---------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_ticket_is_single_use_and_bound_to_its_user() -> None:
    book = TicketBook(30.0, clock=FakeClock())
    ticket, _ = book.issue("alice")
    assert not book.consume("bob", ticket)
    assert book.consume("alice", ticket)
    assert not book.consume("alice", ticket)
    assert (book.issued, book.consumed, book.rejected) == (1, 1, 2)


def test_ticket_expires() -> None:
    clock = FakeClock()
    book = TicketBook(30.0, clock=clock)
    ticket, expires_at = book.issue("alice")
    assert expires_at == pytest.approx(clock.now + 30.0)
    clock.now += 30.001
    assert not book.consume("alice", ticket)


def test_forged_and_foreign_tickets_are_refused() -> None:
    book = TicketBook(30.0)
    other = TicketBook(30.0)
    genuine, _ = book.issue("alice")
    payload, mac = genuine.split(".")
    forged_user = TicketBook(30.0, secret=b"x" * 32).issue("alice")[0].split(".")[0] + "." + mac
    raw_mac = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
    # one bit flipped (editing the base64 text could leave the bytes as they were: 1 run in ~1,000 did)
    tampered = base64.urlsafe_b64encode(bytes([raw_mac[0] ^ 1]) + raw_mac[1:]).rstrip(b"=").decode()
    assert tampered != mac
    for bad in ["", "nonsense", "a.b.c", f"{payload}.{tampered}", forged_user, other.issue("alice")[0]]:
        assert not book.consume("alice", bad), bad
    assert book.consume("alice", genuine)


def test_consumed_tickets_are_forgotten_after_expiry() -> None:
    clock = FakeClock()
    book = TicketBook(10.0, clock=clock)
    for _ in range(50):
        assert book.consume("alice", book.issue("alice")[0])
    assert book.remembered == 50
    clock.now += 11
    assert book.consume("alice", book.issue("alice")[0])
    assert book.remembered == 1


def test_ticket_book_repr_holds_no_secret() -> None:
    book = TicketBook(30.0)
    ticket, _ = book.issue("alice")
    assert ticket not in repr(book) and "alice" not in repr(book)
