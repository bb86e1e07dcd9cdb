"""Rebalances, refused sends and the partition status, through whole apps on the memory broker."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import pytest

from di_lifespan import (
    App,
    Assignment,
    MemoryBroker,
    Message,
    ShutdownError,
    StartupError,
    Subscription,
)
from di_lifespan._memory import _MemoryConsumer

from .drain import drained


def counting_app(broker: MemoryBroker, seen: Counter[int], name: str) -> App:
    """An app whose handler counts each id it handles, in the group "workers"."""
    app = App(broker=broker, graceful_timeout=5)

    @app.subscriber("jobs", group="workers", max_concurrency=4)
    async def work(number: int, message: Message) -> None:
        seen[number] += 1
        await anyio.sleep(0.001)

    work.__qualname__ = name
    return app


async def test_a_member_joining_and_leaving_mid_stream_loses_and_repeats_nothing() -> None:
    """A second app joins the group while the first is busy, then leaves: each id once."""
    broker = MemoryBroker(partitions=6)
    seen: Counter[int] = Counter()
    first, second = counting_app(broker, seen, "first"), counting_app(broker, seen, "second")
    for number in range(600):
        await broker.send("jobs", str(number).encode())
    with anyio.fail_after(30):
        async with first:
            while sum(seen.values()) < 100:  # noqa: ASYNC110  # a count to reach, no event
                await anyio.sleep(0.005)
            async with second:  # joins: the first gives back what it had queued
                while sum(seen.values()) < 400:  # noqa: ASYNC110  # a count to reach
                    await anyio.sleep(0.005)
            # the second left: its partitions come back to the first
            await drained(broker)
    assert set(seen) == set(range(600))
    assert [number for number, count in seen.items() if count > 1] == []
    assert broker.committed("workers", "jobs") == broker.end_offsets("jobs")


async def test_a_result_the_broker_refuses_is_dead_lettered_and_the_next_is_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A result over the size limit: the input goes to the dead-letter topic, once, and on."""
    broker = MemoryBroker(max_message_bytes=1_000)
    app = App(broker=broker)
    calls: list[int] = []

    @app.subscriber("sizes", group="g")
    @app.publisher("blobs")
    async def blow_up(size: int) -> bytes:
        calls.append(size)
        return b"x" * size

    async with app:
        await app.publish("sizes", 5_000)
        await app.publish("sizes", 10)
        await drained(broker)
    assert calls == [5_000, 10]  # not retried: it would be refused again
    assert [m.value for m in broker.messages("blobs")] == [b"x" * 10]
    (dead,) = broker.messages("sizes.dlq")
    assert dead.value == b"5000"
    assert dead.header("x-error-type") == "SendRejectedError"
    assert "too large" in (dead.header("x-error") or "")
    assert broker.committed("g", "sizes") == [2]


async def test_app_partitions_lists_each_subscribers_partitions_with_lag() -> None:
    """app.partitions() gives each subscriber's owned partitions with committed offset and lag."""
    broker = MemoryBroker(partitions=2)
    app = App(broker=broker)
    release = anyio.Event()

    @app.subscriber("jobs", group="g")
    async def work(number: int) -> None:
        await release.wait()

    assert await app.partitions() == {}
    async with app:
        for number in range(4):
            await app.publish("jobs", number)
        await anyio.sleep(0.05)
        statuses = (await app.partitions())[work.__qualname__]
        assert [(s.partition, s.end) for s in statuses] == [(0, 2), (1, 2)]
        assert sum(s.lag for s in statuses) == 4  # nothing done yet
        release.set()
        await drained(broker)
        assert sum(s.lag for s in (await app.partitions())[work.__qualname__]) == 0


def watching_app(
    broker: MemoryBroker,
    name: str,
    log: list[tuple[str, int, int]],
    active: list[tuple[str, int, int]],
    handler_seconds: float = 0.02,
    **options: Any,
) -> App:
    """An app in group "g" whose handler logs (member, partition, offset) and takes a while.

    ``active`` holds the messages in hand of all the apps given it: a handler entered while
    another is in the same partition logs "OVERLAP".
    """
    app = App(broker=broker, **options)

    @app.subscriber("jobs", group="g", max_concurrency=2)
    async def work(number: int, message: Message) -> None:
        if any(entry[1] == message.partition for entry in active):
            log.append(("OVERLAP", message.partition, message.offset))
        entry = (name, message.partition, message.offset)
        active.append(entry)
        log.append(entry)
        await anyio.sleep(handler_seconds)
        active.remove(entry)

    work.__qualname__ = name
    return app


async def test_a_revoke_stops_the_partition_after_its_message_in_hand() -> None:
    """Once revoked, a member handles no more of its queued messages: no overlap, no repeat."""
    broker = MemoryBroker(partitions=2)
    log: list[tuple[str, int, int]] = []
    active: list[tuple[str, int, int]] = []
    for number in range(60):
        await broker.send("jobs", str(number).encode())
    first = watching_app(broker, "first", log, active, graceful_timeout=0.3)
    second = watching_app(broker, "second", log, active, graceful_timeout=0.3)
    with anyio.fail_after(30):
        async with first:
            await anyio.sleep(0.1)
            async with second:
                await drained(broker)
    assert [entry for entry in log if entry[0] == "OVERLAP"] == []
    handled = Counter((partition, offset) for _, partition, offset in log)
    assert [key for key, count in handled.items() if count > 1] == []
    assert len(handled) == 60


async def test_a_member_whose_join_times_out_leaves_the_others_working() -> None:
    """A joining app cut short by its startup_timeout: the existing member goes on with all."""
    broker = MemoryBroker(partitions=2)
    log: list[tuple[str, int, int]] = []
    active: list[tuple[str, int, int]] = []
    for number in range(10):
        await broker.send("jobs", str(number).encode())
    # 100 ms a message: the join waits for the message in hand, longer than its 5 ms limit
    first = watching_app(broker, "first", log, active, 0.1, graceful_timeout=30)
    late = watching_app(broker, "late", log, active, startup_timeout=0.005)
    with anyio.fail_after(30):
        async with first:
            await anyio.sleep(0.05)
            with pytest.raises(StartupError):
                async with late:
                    pass
            for number in range(10):
                await broker.send("jobs", str(100 + number).encode())
            await drained(broker)
    assert broker.committed("g", "jobs") == broker.end_offsets("jobs") == [10, 10]


class AlteredConsumers(MemoryBroker):
    """A memory broker that hands each consumer it makes to ``alter`` (a test double's change)."""

    def __init__(self, alter: Callable[[_MemoryConsumer], None]) -> None:
        super().__init__()
        self._alter = alter

    async def subscribe(
        self, subscription: Subscription, assignment: Assignment
    ) -> _MemoryConsumer:
        consumer = await super().subscribe(subscription, assignment)
        self._alter(consumer)
        return consumer


def cancel_itself_on_close(consumer: _MemoryConsumer) -> None:
    """The consumer's close lets out a CancelledError of its own."""
    close = consumer.close

    async def close_badly() -> None:
        await close()
        raise asyncio.CancelledError  # as aiokafka's stop can, cancelling a task of its own

    consumer.close = close_badly  # type: ignore[method-assign]  # a test double


async def test_a_client_cancelling_itself_in_its_close_is_a_named_shutdown_failure() -> None:
    """A stray CancelledError from a consumer's close: a ShutdownError naming the subscriber."""
    app = App(broker=AlteredConsumers(cancel_itself_on_close))

    @app.subscriber("jobs", group="g")
    async def work(number: int) -> None: ...

    with anyio.fail_after(10), pytest.raises(ShutdownError) as caught:
        async with app:
            await app.publish("jobs", 1)
    (failure,) = caught.value.exceptions
    assert "leaving its consumer group failed: CancelledError" in str(failure)


def hold_back_the_first_commit(consumer: _MemoryConsumer) -> None:
    """The consumer's first commit meets a rebalance and is held back."""
    commit = consumer.commit
    held: list[Mapping[tuple[str, int], int]] = []

    async def commit_after_a_rebalance(
        offsets: Mapping[tuple[str, int], int],
    ) -> dict[tuple[str, int], int]:
        if not held:
            held.append(offsets)
            return dict(offsets)  # RebalanceInProgress: the group takes them later
        return await commit(offsets)

    consumer.commit = commit_after_a_rebalance  # type: ignore[method-assign]  # a test double


async def test_a_commit_a_rebalance_holds_back_at_the_stop_is_made_before_leaving() -> None:
    """The last commit of a graceful stop meets a rebalance: it is tried again, not dropped."""
    broker = AlteredConsumers(hold_back_the_first_commit)
    app = App(broker=broker, graceful_timeout=5)
    handled = anyio.Event()

    @app.subscriber("jobs", group="g")
    async def work(number: int) -> None:
        handled.set()

    with anyio.fail_after(10):
        async with app:
            await app.publish("jobs", 1)
            await handled.wait()
    assert broker.committed("g", "jobs") == [1]
