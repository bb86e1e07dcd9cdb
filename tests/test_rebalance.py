"""Rebalances, refused sends and the partition status, through whole apps on the memory broker."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

from di_lifespan import App, MemoryBroker, Message

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
