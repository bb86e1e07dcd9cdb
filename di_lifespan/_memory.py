"""``memory://``: a broker inside the process, with topics, partitions, offsets and groups.

It keeps every message for as long as the broker object lives, so an app stopped and started
again on the same broker finds its group's committed offsets, and gets its uncommitted
messages again.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
from aiokafka.partitioner import murmur2

from ._broker import Delivery, Subscription, TopicPartition
from ._errors import ConfigurationError
from ._message import Message

__all__ = ["MemoryBroker"]

KEY_CACHE = 65_536  # keys whose partition is remembered before the memo starts over


# A stored message: value, key, headers (None when there are none), timestamp in ms. A tuple,
# not a class: building one per send is the memory broker's hottest line.
_Record = tuple[bytes, bytes | None, Mapping[str, bytes] | None, int]


@dataclass(slots=True)
class _Topic:
    partitions: list[list[_Record]]
    next_keyless: itertools.cycle[int]


@dataclass(slots=True)
class _Group:
    """A consumer group's state on one topic: committed offsets and who reads which partition."""

    committed: list[int]
    position: list[int]
    members: list[_MemoryConsumer] = field(default_factory=list)

    def rebalance(self) -> None:
        # Uncommitted positions are forgotten: the new owner starts from the committed offset.
        self.position[:] = self.committed


class MemoryBroker:
    """A broker inside the process, for tests and local runs.

    ``partitions`` is how many partitions a topic gets when it is first used;
    ``topic_partitions`` sets it per topic. A message with a key goes to the partition Kafka's
    default partitioner gives it (murmur2); one without a key to the next partition in turn.
    """

    url = "memory://"

    def __init__(
        self, partitions: int = 1, topic_partitions: Mapping[str, int] | None = None
    ) -> None:
        for where, count in [("partitions", partitions), *(topic_partitions or {}).items()]:
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigurationError(
                    f"MemoryBroker({where})", f"expected a positive whole number, got {count!r}"
                )
        self._default_partitions = partitions
        self._topic_partitions = dict(topic_partitions or {})
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._anonymous = itertools.count(1)
        # murmur2 in pure Python costs microseconds; keys repeat, so each is hashed once.
        self._key_partitions: dict[tuple[bytes, int], int] = {}
        # Made only while someone waits: an event per send would cost more than the send.
        self._changed: anyio.Event | None = None

    async def start(self) -> None:
        """Nothing to connect to."""

    async def stop(self) -> None:
        """Nothing to flush: every send is stored at once. Wake every waiting fetch."""
        self._notify()

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> Delivery | None:
        """Store the message in its partition; it is acknowledged at once."""
        log = self._topics.get(topic) or self._topic(topic)
        partition = next(log.next_keyless) if key is None else self._partition_of(key, log)
        log.partitions[partition].append((value, key, headers or None, time.time_ns() // 1_000_000))
        self._notify()
        return None

    def _partition_of(self, key: bytes, log: _Topic) -> int:
        """The partition Kafka's default partitioner (murmur2) gives ``key``, remembered."""
        count = len(log.partitions)
        partition = self._key_partitions.get((key, count))
        if partition is None:
            if len(self._key_partitions) >= KEY_CACHE:
                self._key_partitions.clear()
            partition = (murmur2(key) & 0x7FFFFFFF) % count
            self._key_partitions[(key, count)] = partition
        return partition

    async def subscribe(self, subscription: Subscription) -> _MemoryConsumer:
        """A consumer of the subscription's topics, taking its share of the group's partitions."""
        group = subscription.group or f"\0anonymous-{next(self._anonymous)}"
        consumer = _MemoryConsumer(self, group, subscription.topics)
        for topic in subscription.topics:
            state = self._group(group, topic, from_end=subscription.group is None)
            state.members.append(consumer)
            state.rebalance()
        return consumer

    # --- what tests and the test client read ---------------------------------------------

    def messages(self, topic: str) -> list[Message]:
        """Every message stored in ``topic``, partition by partition, in offset order."""
        log = self._topics.get(topic)
        if log is None:
            return []
        return [
            _message(topic, partition, offset, record)
            for partition, records in enumerate(log.partitions)
            for offset, record in enumerate(records)
        ]

    def end_offsets(self, topic: str) -> list[int]:
        """The offset the next message of each partition will get (a query: creates nothing).

        A topic nobody used yet has the partitions it would get, all at 0.
        """
        log = self._topics.get(topic)
        if log is None:
            return [0] * self._topic_partitions.get(topic, self._default_partitions)
        return [len(records) for records in log.partitions]

    def committed(self, group: str, topic: str) -> list[int]:
        """The group's committed offsets on ``topic``, one per partition (creates nothing).

        A group that never committed on the topic is at 0 on each partition.
        """
        state = self._groups.get((group, topic))
        if state is None:
            return [0] * len(self.end_offsets(topic))
        return list(state.committed)

    def pending(self) -> int:
        """How many stored messages some subscribed group has not committed yet."""
        return sum(self.pending_by_topic().values())

    def pending_by_topic(self) -> dict[str, int]:
        """Per topic, how many stored messages some subscribed group has not committed yet."""
        counts: dict[str, int] = {}
        for (_, topic), state in self._groups.items():
            if state.members:
                ends = self.end_offsets(topic)
                left = sum(end - done for end, done in zip(ends, state.committed, strict=True))
                if left:
                    counts[topic] = counts.get(topic, 0) + left
        return counts

    async def wait_for_change(self) -> None:
        """Return after the next send, commit or stop."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    # --- internals -----------------------------------------------------------------------

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _topic(self, topic: str) -> _Topic:
        log = self._topics.get(topic)
        if log is None:
            count = self._topic_partitions.get(topic, self._default_partitions)
            log = self._topics[topic] = _Topic(
                [[] for _ in range(count)], itertools.cycle(range(count))
            )
        return log

    def _group(self, group: str, topic: str, *, from_end: bool) -> _Group:
        state = self._groups.get((group, topic))
        if state is None:
            log = self._topic(topic)  # a subscription makes its topics exist
            start = [len(records) if from_end else 0 for records in log.partitions]
            state = self._groups[(group, topic)] = _Group(list(start), start)
        return state

    def _fetch(self, consumer: _MemoryConsumer, max_records: int) -> list[Message]:
        batch: list[Message] = []
        for topic in consumer.topics:
            state = self._groups[(consumer.group, topic)]
            partitions = self._topics[topic].partitions
            for partition in range(
                consumer.member_index(state), len(partitions), len(state.members)
            ):
                start = state.position[partition]
                records = partitions[partition][start : start + max_records - len(batch)]
                batch.extend(
                    _message(topic, partition, start + index, record)
                    for index, record in enumerate(records)
                )
                state.position[partition] = start + len(records)
                if len(batch) >= max_records:
                    return batch
        return batch

    def _commit(self, consumer: _MemoryConsumer, offsets: Mapping[TopicPartition, int]) -> None:
        for (topic, partition), offset in offsets.items():
            state = self._groups[(consumer.group, topic)]
            state.committed[partition] = max(state.committed[partition], offset)
        self._notify()

    def _leave(self, consumer: _MemoryConsumer) -> None:
        for topic in consumer.topics:
            state = self._groups[(consumer.group, topic)]
            if consumer in state.members:
                state.members.remove(consumer)
                state.rebalance()
        self._notify()


class _MemoryConsumer:
    """One subscriber's view of the memory broker."""

    def __init__(self, broker: MemoryBroker, group: str, topics: tuple[str, ...]) -> None:
        self._broker = broker
        self.group = group
        self.topics = topics
        self._stopped = False

    def member_index(self, state: _Group) -> int:
        return state.members.index(self)

    async def fetch(self, max_records: int) -> Sequence[Message]:
        waited = False
        while not self._stopped:
            batch = self._broker._fetch(self, max_records)  # noqa: SLF001  # the broker's own consumer
            if batch:
                if not waited:
                    # Handlers that publish to each other would otherwise never let another
                    # task run (a test's settle_timeout, a stop): yield to the loop once.
                    await anyio.lowlevel.checkpoint()
                return batch
            await self._broker.wait_for_change()
            waited = True
        return []

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._broker._commit(self, offsets)  # noqa: SLF001  # the broker's own consumer

    def stop(self) -> None:
        self._stopped = True
        self._broker._notify()  # noqa: SLF001  # the broker's own consumer

    async def close(self) -> None:
        self.stop()
        self._broker._leave(self)  # noqa: SLF001  # the broker's own consumer


def _message(topic: str, partition: int, offset: int, record: _Record) -> Message:
    value, key, headers, timestamp_ms = record
    return Message(
        topic, partition, offset, value, key, dict(headers) if headers else {}, timestamp_ms
    )
