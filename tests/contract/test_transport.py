"""The transport contract: what the handler pipeline relies on from any broker."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from aiokafka.partitioner import murmur2

from di_lifespan import Broker, Consumer, Message, Subscription


async def send_all(
    broker: Broker, topic: str, values: Sequence[bytes], key: bytes | None = None
) -> None:
    """Send each value and wait for every acknowledgement."""
    for value in values:
        delivery = await broker.send(topic, value, key=key, headers={"h": b"v"})
        if delivery is not None:
            await delivery


async def fetch_exactly(consumer: Consumer, count: int) -> list[Message]:
    """Fetch until ``count`` messages have come (a guard stops a hung transport)."""
    messages: list[Message] = []
    with anyio.fail_after(30):
        while len(messages) < count:
            messages.extend(await consumer.fetch(count - len(messages)))
    return messages


async def test_a_group_reads_what_was_sent_with_its_metadata(broker: Broker, topic: str) -> None:
    """Messages come back with topic, partition, offset, key, headers and a timestamp."""
    await send_all(broker, topic, [b"a", b"b", b"c"], key=b"same")
    consumer = await broker.subscribe(Subscription((topic,), "group-a", "reader"))
    messages = await fetch_exactly(consumer, 3)
    assert [m.value for m in messages] == [b"a", b"b", b"c"]
    assert {m.partition for m in messages} == {messages[0].partition}  # one key, one partition
    assert [m.offset for m in messages] == sorted(m.offset for m in messages)
    assert all(m.topic == topic and m.key == b"same" and m.headers == {"h": b"v"} for m in messages)
    assert all(m.timestamp_ms > 0 for m in messages)
    await consumer.close()


async def test_a_group_resumes_from_its_committed_offsets(broker: Broker, topic: str) -> None:
    """After a commit, the group's next consumer starts after what was committed."""
    await send_all(broker, topic, [b"1", b"2", b"3"], key=b"k")
    first = await broker.subscribe(Subscription((topic,), "group-b", "reader"))
    one, two, _ = await fetch_exactly(first, 3)
    await first.commit({(two.topic, two.partition): two.offset + 1})
    await first.close()
    second = await broker.subscribe(Subscription((topic,), "group-b", "reader"))
    (again,) = await fetch_exactly(second, 1)
    assert again.value == b"3"
    await second.close()
    assert one.value == b"1"


async def test_uncommitted_messages_are_read_again_by_the_next_consumer(
    broker: Broker, topic: str
) -> None:
    """A consumer that leaves without committing hands its messages to the next one."""
    await send_all(broker, topic, [b"x", b"y"], key=b"k")
    first = await broker.subscribe(Subscription((topic,), "group-c", "reader"))
    await fetch_exactly(first, 2)
    await first.close()
    second = await broker.subscribe(Subscription((topic,), "group-c", "reader"))
    assert [m.value for m in await fetch_exactly(second, 2)] == [b"x", b"y"]
    await second.close()


async def test_a_consumer_without_a_group_reads_only_what_comes_after_it(
    broker: Broker, topic: str
) -> None:
    """Without a group, reading starts at the end of the log: older messages are not read."""
    await send_all(broker, topic, [b"old"], key=b"k")
    consumer = await broker.subscribe(Subscription((topic,), None, "reader"))
    try:
        await send_all(broker, topic, [b"new"], key=b"k")  # right away: nothing may be skipped
        assert [m.value for m in await fetch_exactly(consumer, 1)] == [b"new"]
    finally:
        await consumer.close()


async def test_stop_wakes_a_waiting_fetch(broker: Broker, topic: str) -> None:
    """A fetch waits while there is nothing to read; stop() makes it return an empty batch.

    Every later fetch returns at once, empty, even with messages in the log.
    """
    consumer = await broker.subscribe(Subscription((topic,), "group-d", "reader"))
    fetched: list[Sequence[Message]] = []

    async def wait_for_messages() -> None:
        fetched.append(await consumer.fetch(10))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(wait_for_messages)
            await anyio.wait_all_tasks_blocked()
            assert fetched == []  # still waiting: nothing was sent
            consumer.stop()
        assert fetched == [[]]
        await send_all(broker, topic, [b"after stop"], key=b"k")
        assert await consumer.fetch(10) == []
    await consumer.close()


async def test_keys_pick_one_partition_each(broker: Broker, topic: str) -> None:
    """Every message with the same key lands in the same partition."""
    for index in range(6):
        await send_all(broker, topic, [str(index).encode()], key=f"key-{index % 2}".encode())
    consumer = await broker.subscribe(Subscription((topic,), "group-e", "reader"))
    messages = await fetch_exactly(consumer, 6)
    partitions: dict[bytes | None, set[int]] = {}
    for message in messages:
        partitions.setdefault(message.key, set()).add(message.partition)
    assert all(len(used) == 1 for used in partitions.values())
    await consumer.close()


async def test_keys_land_where_kafkas_default_partitioner_puts_them(
    broker: Broker, topic: str
) -> None:
    """Both transports place a key on the partition murmur2 gives it, as Kafka clients do."""
    keys = [f"customer-{index}".encode() for index in range(12)]
    for key in keys:
        await send_all(broker, topic, [b"order"], key=key)
    consumer = await broker.subscribe(Subscription((topic,), "group-f", "reader"))
    messages = await fetch_exactly(consumer, len(keys))
    placed = {message.key: message.partition for message in messages}
    assert placed == {key: (murmur2(key) & 0x7FFFFFFF) % 3 for key in keys}
    assert len(set(placed.values())) > 1  # the keys really spread
    await consumer.close()
