"""The transport contract: what the handler pipeline relies on from any broker."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import anyio
import pytest
from aiokafka.partitioner import murmur2

from di_lifespan import Broker, Consumer, Message, SendRejectedError, Subscription
from di_lifespan._broker import TopicPartition
from di_lifespan._message import HeaderPairs

from .conftest import PARTITIONS


class Owned:
    """An Assignment that records what its consumer is given and what is taken from it."""

    def __init__(self) -> None:
        self.partitions: set[TopicPartition] = set()
        self.events: list[tuple[str, frozenset[TopicPartition]]] = []
        self.changed = anyio.Event()

    def assigned(self, partitions: Collection[TopicPartition]) -> None:
        self.partitions |= set(partitions)
        self._record("assigned", partitions)

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        await anyio.sleep(0.01)  # the rebalance waits for this
        self.partitions -= set(partitions)
        self._record("revoked", partitions)

    def _record(self, event: str, partitions: Collection[TopicPartition]) -> None:
        self.events.append((event, frozenset(partitions)))
        self.changed.set()
        self.changed = anyio.Event()


async def subscribe(broker: Broker, topic: str, group: str | None) -> Consumer:
    """Subscribe a consumer to ``topic`` with an Assignment that records nothing needed."""
    return await broker.subscribe(Subscription((topic,), group, "reader"), Owned())


async def send_all(
    broker: Broker,
    topic: str,
    values: Sequence[bytes],
    key: bytes | None = None,
    headers: HeaderPairs | None = (("h", b"v"),),
) -> None:
    """Send each value and wait for every acknowledgement."""
    for value in values:
        delivery = await broker.send(topic, value, key=key, headers=headers)
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
    consumer = await subscribe(broker, topic, "group-a")
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
    first = await subscribe(broker, topic, "group-b")
    one, two, _ = await fetch_exactly(first, 3)
    await first.commit({(two.topic, two.partition): two.offset + 1})
    await first.close()
    second = await subscribe(broker, topic, "group-b")
    (again,) = await fetch_exactly(second, 1)
    assert again.value == b"3"
    await second.close()
    assert one.value == b"1"


async def test_uncommitted_messages_are_read_again_by_the_next_consumer(
    broker: Broker, topic: str
) -> None:
    """A consumer that leaves without committing hands its messages to the next one."""
    await send_all(broker, topic, [b"x", b"y"], key=b"k")
    first = await subscribe(broker, topic, "group-c")
    await fetch_exactly(first, 2)
    await first.close()
    second = await subscribe(broker, topic, "group-c")
    assert [m.value for m in await fetch_exactly(second, 2)] == [b"x", b"y"]
    await second.close()


async def test_a_consumer_without_a_group_reads_only_what_comes_after_it(
    broker: Broker, topic: str
) -> None:
    """Without a group, reading starts at the end of the log: older messages are not read."""
    await send_all(broker, topic, [b"old"], key=b"k")
    consumer = await subscribe(broker, topic, None)
    try:
        await send_all(broker, topic, [b"new"], key=b"k")  # right away: nothing may be skipped
        assert [m.value for m in await fetch_exactly(consumer, 1)] == [b"new"]
    finally:
        await consumer.close()


async def test_stop_wakes_a_waiting_fetch(broker: Broker, topic: str) -> None:
    """A fetch waits while there is nothing to read; stop() makes it return an empty batch.

    Every later fetch returns at once, empty, even with messages in the log.
    """
    consumer = await subscribe(broker, topic, "group-d")
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
    consumer = await subscribe(broker, topic, "group-e")
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
    consumer = await subscribe(broker, topic, "group-f")
    messages = await fetch_exactly(consumer, len(keys))
    placed = {message.key: message.partition for message in messages}
    assert placed == {key: (murmur2(key) & 0x7FFFFFFF) % 3 for key in keys}
    assert len(set(placed.values())) > 1  # the keys really spread
    await consumer.close()


async def wait_until(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    """Poll ``check`` until it holds (a Kafka group changes in the broker's own time)."""
    with anyio.fail_after(seconds):
        while not check():  # noqa: ASYNC110  # a Kafka group has no event to wait on
            await anyio.sleep(0.02)


async def test_a_consumer_is_told_which_partitions_it_owns(broker: Broker, topic: str) -> None:
    """The Assignment hears of every partition given; assignment() says the same."""
    owned = Owned()
    consumer = await broker.subscribe(Subscription((topic,), "group-g", "reader"), owned)
    try:
        everything = {(topic, partition) for partition in range(PARTITIONS)}
        await wait_until(lambda: owned.partitions == everything, "the first assignment")
        assert consumer.assignment() == everything
    finally:
        await consumer.close()


async def test_a_member_joining_gets_partitions_revoked_first_and_committed_work_kept(
    broker: Broker, topic: str
) -> None:
    """A second member: the first is told (and awaited) before partitions move; none is shared.

    What the first committed in its revoke is where each new owner starts.
    """
    values = [str(index).encode() for index in range(12)]
    await send_all(broker, topic, values, key=None)
    first_owned = Owned()
    first = await broker.subscribe(Subscription((topic,), "group-h", "first"), first_owned)
    consumer_done: list[Message] = await fetch_exactly(first, len(values))

    async def commit_on_revoke(partitions: Collection[TopicPartition]) -> None:
        done = {
            (m.topic, m.partition): m.offset + 1
            for m in consumer_done
            if (m.topic, m.partition) in partitions
        }
        await first.commit(done)
        first_owned.partitions -= set(partitions)
        first_owned._record("revoked", partitions)

    first_owned.revoked = commit_on_revoke  # type: ignore[method-assign]  # this test's own revoke
    second_owned = Owned()
    second = await broker.subscribe(Subscription((topic,), "group-h", "second"), second_owned)
    try:
        polling = anyio.Event()

        async def keep_polling(consumer: Consumer) -> None:
            while not polling.is_set():
                await consumer.fetch(100)

        async with anyio.create_task_group() as group:
            group.start_soon(keep_polling, first)
            group.start_soon(keep_polling, second)
            await wait_until(
                lambda: (
                    bool(first_owned.partitions)
                    and bool(second_owned.partitions)
                    and len(first_owned.partitions | second_owned.partitions) == PARTITIONS
                ),
                "both members assigned",
            )
            polling.set()
            first.stop()
            second.stop()
        assert not first_owned.partitions & second_owned.partitions
        assert first_owned.events[0][0] == "assigned"
        assert ("revoked", first_owned.events[1][1]) == first_owned.events[1]
        assert first.assignment() == first_owned.partitions
        assert second.assignment() == second_owned.partitions
        # What the first member committed in its revoke is where each owner starts now.
        counts = dict.fromkeys(range(PARTITIONS), 0)
        for message in consumer_done:
            counts[message.partition] += 1
        statuses = [*await first.status(), *await second.status()]
        # a partition no message went to was never committed: None, counted as 0
        assert {s.partition: s.committed or 0 for s in statuses} == counts
    finally:
        await second.close()
        await first.close()


async def test_a_paused_partition_gives_nothing_until_resumed(broker: Broker, topic: str) -> None:
    """pause() holds a partition back while the others are read; resume() brings it back."""
    owned = Owned()
    consumer = await broker.subscribe(Subscription((topic,), "group-i", "reader"), owned)
    try:
        await wait_until(lambda: len(owned.partitions) == PARTITIONS, "the assignment")
        held = (murmur2(b"held") & 0x7FFFFFFF) % PARTITIONS
        other_key = next(
            f"k{index}".encode()
            for index in range(100)
            if (murmur2(f"k{index}".encode()) & 0x7FFFFFFF) % PARTITIONS != held
        )
        consumer.pause([(topic, held)])
        await send_all(broker, topic, [b"held"], key=b"held")
        await send_all(broker, topic, [b"free"], key=other_key)
        assert [m.value for m in await fetch_exactly(consumer, 1)] == [b"free"]
        with anyio.move_on_after(0.5):  # nothing more comes while it is paused
            assert await consumer.fetch(10) == []
        consumer.resume([(topic, held)])
        assert [m.value for m in await fetch_exactly(consumer, 1)] == [b"held"]
    finally:
        await consumer.close()


async def test_status_gives_committed_end_and_lag_per_owned_partition(
    broker: Broker, topic: str
) -> None:
    """status() lists each owned partition with the group's committed offset, end and lag."""
    owned = Owned()
    consumer = await broker.subscribe(Subscription((topic,), "group-j", "reader"), owned)
    try:
        await wait_until(lambda: len(owned.partitions) == PARTITIONS, "the assignment")
        await send_all(broker, topic, [b"1", b"2", b"3"], key=b"k")
        messages = await fetch_exactly(consumer, 3)
        partition = messages[0].partition
        await consumer.commit({(topic, partition): messages[0].offset + 1})
        statuses = {status.partition: status for status in await consumer.status()}
        assert set(statuses) == set(range(PARTITIONS))
        mine = statuses[partition]
        assert (mine.committed, mine.end, mine.lag) == (1, 3, 2)
    finally:
        await consumer.close()


async def test_a_commit_for_a_partition_not_owned_is_dropped(broker: Broker, topic: str) -> None:
    """Committing a partition the consumer does not own raises nothing and changes nothing."""
    owned = Owned()
    consumer = await broker.subscribe(Subscription((topic,), "group-k", "reader"), owned)
    try:
        await wait_until(lambda: len(owned.partitions) == PARTITIONS, "the assignment")
        await consumer.commit({(f"{topic}-other", 0): 5})
    finally:
        await consumer.close()


async def test_headers_are_ordered_pairs_with_repeated_names(broker: Broker, topic: str) -> None:
    """Headers come back in order with repeated names; the dict view holds the last value."""
    pairs = [("hop", b"1"), ("trace", b"t"), ("hop", b"2")]
    await send_all(broker, topic, [b"x"], key=b"k", headers=pairs)
    consumer = await subscribe(broker, topic, "group-l")
    try:
        (message,) = await fetch_exactly(consumer, 1)
        assert list(message.header_list) == pairs
        assert message.headers == {"hop": b"2", "trace": b"t"}
    finally:
        await consumer.close()


async def test_a_message_too_large_is_refused_as_send_rejected(broker: Broker, topic: str) -> None:
    """A message over the size limit raises SendRejectedError (from send or its Delivery)."""
    with pytest.raises(SendRejectedError) as caught:
        await send_all(broker, topic, [b"x" * 2_000_000])
    assert caught.value.topic == topic
    assert "too large" in str(caught.value).lower()
