"""``memory://``: a broker inside the process, with topics, partitions, offsets and groups.

It keeps every message for as long as the broker object lives, up to ``retention`` messages a
partition, so an app stopped and started again on the same broker finds its group's committed
offsets, and gets its uncommitted messages again. Groups behave as Kafka's do: a member joining
or leaving starts a new generation, in which every member first gives up its partitions (its
``revoked`` is awaited), then the partitions are shared out again by ranges, as Kafka's range
assignor does, and each member reads them from the group's committed offsets.

Retention works as Kafka's does: the oldest messages of a partition go once it holds more than
``retention``, whether or not a group has read them (its log start offset moves up; offsets are
never reused). A consumer whose position has fallen below the log start goes on from the log
start, as a Kafka consumer with ``auto.offset.reset=earliest`` does, and a warning says how
many messages it never read.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
from aiokafka.partitioner import murmur2

from ._broker import Assignment, Delivery, PartitionStatus, Subscription, TopicPartition
from ._errors import ConfigurationError, SendRejectedError
from ._message import HeaderPairs, Message

__all__ = ["MemoryBroker"]

logger = logging.getLogger("di_lifespan")

RETENTION = 1_000_000  # messages a partition keeps by default: far more than any test sends
KEY_CACHE = 65_536  # keys whose partition is remembered before the memo starts over
MAX_MESSAGE_BYTES = 1_048_576  # Kafka's default max.message.bytes


# A stored message: value, key, headers (None when there are none), timestamp in ms. A tuple,
# not a class: building one per send is the memory broker's hottest line.
_Record = tuple[bytes, bytes | None, tuple[tuple[str, bytes], ...] | None, int]


@dataclass(slots=True)
class _Topic:
    partitions: list[list[_Record]]
    # The offset of each partition's first stored record: 0 until retention drops some.
    starts: list[int]
    next_keyless: itertools.cycle[int]


@dataclass(slots=True)
class _Group:
    """A consumer group: its committed offsets, its members, and one rebalance at a time."""

    committed: dict[TopicPartition, int]
    from_end: bool
    name: str = ""
    members: list[_MemoryConsumer] = field(default_factory=list)
    rebalancing: anyio.Lock | None = None


class MemoryBroker:
    """A broker inside the process, for tests and local runs.

    ``partitions`` is how many partitions a topic gets when it is first used;
    ``topic_partitions`` sets it per topic. A message with a key goes to the partition Kafka's
    default partitioner gives it (murmur2); one without a key to the next partition in turn.
    A message larger than ``max_message_bytes`` (value, key and headers) is refused, as Kafka
    refuses one above its ``max.message.bytes``: its Delivery raises SendRejectedError.

    ``retention`` bounds how many messages a partition keeps (1,000,000 by default; ``None``
    keeps every one): past it the oldest go, read or not, as Kafka's retention deletes old
    segments. ``messages()`` returns what is kept, ``start_offsets()`` where each partition now
    begins; end and committed offsets are unchanged by it. A consumer left below the log start
    reads on from there (Kafka's ``auto.offset.reset=earliest``), with a warning naming what it
    missed. The memory held stays bounded: a partition stores at most a quarter more than
    ``retention`` before the surplus is dropped in one go.
    """

    url = "memory://"

    def __init__(
        self,
        partitions: int = 1,
        topic_partitions: Mapping[str, int] | None = None,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        retention: int | None = RETENTION,
    ) -> None:
        counts = [("partitions", partitions), *(topic_partitions or {}).items()]
        counts += [("max_message_bytes", max_message_bytes)]
        if retention is not None:
            counts += [("retention", retention)]
        for where, count in counts:
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigurationError(
                    f"MemoryBroker({where})", f"expected a positive whole number, got {count!r}"
                )
        self._default_partitions = partitions
        self._topic_partitions = dict(topic_partitions or {})
        self.max_message_bytes = max_message_bytes
        self._quick_limit = max_message_bytes // 2  # a smaller value alone always fits
        self.retention = retention
        self._keep = sys.maxsize if retention is None else retention
        # Dropping one record per send would move the whole list each time: drop in batches.
        self._trim_above = sys.maxsize if retention is None else retention + max(1, retention // 4)
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _Group] = {}
        self._anonymous = itertools.count(1)
        # murmur2 in pure Python costs microseconds; keys repeat, so each is hashed once.
        self._key_partitions: dict[tuple[bytes, int], int] = {}
        # Made only while someone waits: an event per send would cost more than the send.
        self._changed: anyio.Event | None = None
        # The consumers subscribed to each topic: a send wakes only those waiting on it.
        self._readers: dict[str, list[_MemoryConsumer]] = {}

    async def start(self) -> None:
        """Nothing to connect to."""

    async def stop(self) -> None:
        """Nothing to flush: every send is stored at once. Wake every waiting fetch."""
        for readers in self._readers.values():
            for reader in readers:
                reader.wake()
        self._notify()

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: HeaderPairs | None = None,
    ) -> Delivery | None:
        """Store the message in its partition; it is acknowledged at once (or refused)."""
        if (headers or key or len(value) > self._quick_limit) and self._too_large(
            value, key, headers
        ):
            return _Refused(SendRejectedError(self.url, topic, self._size_reason(value)))
        log = self._topics.get(topic) or self._topic(topic)
        partition = next(log.next_keyless) if key is None else self._partition_of(key, log)
        stored = tuple(headers) if headers else None
        records = log.partitions[partition]
        records.append((value, key, stored, time.time_ns() // 1_000_000))
        if len(records) > self._trim_above:
            dropped = len(records) - self._keep
            del records[:dropped]  # in place: consumers hold this list
            log.starts[partition] += dropped
        for reader in self._readers.get(topic, ()):
            reader.wake()
        self._notify()
        return None

    def _too_large(self, value: bytes, key: bytes | None, headers: HeaderPairs | None) -> bool:
        extra = len(key or b"") + sum(len(name) + len(data) for name, data in headers or ())
        return len(value) + extra > self.max_message_bytes

    def _size_reason(self, value: bytes) -> str:
        return (
            f"the message is too large: {len(value)} bytes of value, with its key and headers"
            f" more than max_message_bytes ({self.max_message_bytes})"
        )

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

    async def subscribe(
        self, subscription: Subscription, assignment: Assignment
    ) -> _MemoryConsumer:
        """A consumer of the subscription's topics: it joins its group, which rebalances."""
        name = subscription.group or f"\0anonymous-{next(self._anonymous)}"
        for topic in subscription.topics:
            self._topic(topic)  # a subscription makes its topics exist
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = _Group({}, from_end=subscription.group is None, name=name)
        consumer = _MemoryConsumer(self, group, subscription.topics, assignment)
        for topic in subscription.topics:
            self._readers.setdefault(topic, []).append(consumer)
        await self._rebalance(group, joining=consumer)
        return consumer

    def _forget(self, consumer: _MemoryConsumer) -> None:
        for topic in consumer.topics:
            readers = self._readers.get(topic, [])
            if consumer in readers:
                readers.remove(consumer)

    # --- what tests and the test client read ---------------------------------------------

    def messages(self, topic: str) -> list[Message]:
        """Every message ``topic`` keeps, partition by partition, in offset order."""
        log = self._topics.get(topic)
        if log is None:
            return []
        return [
            _message(topic, partition, start + index, records[index])
            for partition, (start, records) in enumerate(
                zip(log.starts, log.partitions, strict=True)
            )
            for index in range(max(0, len(records) - self._keep), len(records))
        ]

    def start_offsets(self, topic: str) -> list[int]:
        """The offset of the oldest message each partition keeps (Kafka's log start offset).

        0 until retention drops messages; the end offset when a partition keeps none.
        """
        log = self._topics.get(topic)
        if log is None:
            return [0] * self._topic_partitions.get(topic, self._default_partitions)
        return [
            start + max(0, len(records) - self._keep)
            for start, records in zip(log.starts, log.partitions, strict=True)
        ]

    def end_offsets(self, topic: str) -> list[int]:
        """The offset the next message of each partition will get (a query: creates nothing).

        A topic nobody used yet has the partitions it would get, all at 0.
        """
        log = self._topics.get(topic)
        if log is None:
            return [0] * self._topic_partitions.get(topic, self._default_partitions)
        return [
            start + len(records) for start, records in zip(log.starts, log.partitions, strict=True)
        ]

    def committed(self, group: str, topic: str) -> list[int]:
        """The group's committed offsets on ``topic``, one per partition (creates nothing).

        A group that never committed on a partition is at 0 there.
        """
        state = self._groups.get(group)
        committed = state.committed if state is not None else {}
        ends = self.end_offsets(topic)
        return [committed.get((topic, partition), 0) for partition in range(len(ends))]

    def pending(self) -> int:
        """How many stored messages some subscribed group has not committed yet."""
        return sum(self.pending_by_topic().values())

    def pending_by_topic(self) -> dict[str, int]:
        """Per topic, how many kept messages some subscribed group has not committed yet."""
        counts: dict[str, int] = {}
        for state in self._groups.values():
            if not state.members:
                continue
            for topic in {topic for member in state.members for topic in member.topics}:
                ends, starts = self.end_offsets(topic), self.start_offsets(topic)
                left = sum(
                    end - max(start, state.committed.get((topic, partition), 0))
                    for partition, (start, end) in enumerate(zip(starts, ends, strict=True))
                )
                if left:
                    counts[topic] = counts.get(topic, 0) + left
        return counts

    async def wait_for_change(self) -> None:
        """Return after the next send, commit, rebalance, resume or stop."""
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
                [[] for _ in range(count)], [0] * count, itertools.cycle(range(count))
            )
        return log

    async def _rebalance(
        self,
        group: _Group,
        *,
        joining: _MemoryConsumer | None = None,
        leaving: _MemoryConsumer | None = None,
    ) -> None:
        """A new generation: every member gives its partitions up, then they are shared out."""
        if group.rebalancing is None:
            group.rebalancing = anyio.Lock()
        # Shielded: a rebalance cut short would leave members with partitions half given up.
        # Each revoke is bounded by its subscriber's graceful_timeout.
        with anyio.CancelScope(shield=True):
            await self._rebalance_now(group, joining, leaving)
        self._notify()

    async def _rebalance_now(
        self,
        group: _Group,
        joining: _MemoryConsumer | None,
        leaving: _MemoryConsumer | None,
    ) -> None:
        assert group.rebalancing is not None  # made by _rebalance  # noqa: S101
        async with group.rebalancing:
            for member in list(group.members):
                if member is not leaving:
                    await member.give_up()
            if leaving is not None and leaving in group.members:
                group.members.remove(leaving)
            if joining is not None:
                group.members.append(joining)
            for member, partitions in self._share_out(group).items():
                member.take(partitions)
                member.wake()

    def _share_out(self, group: _Group) -> dict[_MemoryConsumer, list[TopicPartition]]:
        """Kafka's range assignor: per topic, each member a contiguous range of partitions."""
        shares: dict[_MemoryConsumer, list[TopicPartition]] = {m: [] for m in group.members}
        topics = sorted({topic for member in group.members for topic in member.topics})
        for topic in topics:
            readers = [member for member in group.members if topic in member.topics]
            count = len(self._topic(topic).partitions)
            each, extra = divmod(count, len(readers))
            start = 0
            for index, member in enumerate(readers):
                size = each + (1 if index < extra else 0)
                shares[member].extend((topic, p) for p in range(start, start + size))
                start += size
        return shares

    def _start_offset(self, group: _Group, partition: TopicPartition) -> int:
        committed = group.committed.get(partition)
        if committed is not None:
            return committed
        topic, index = partition
        start = self.end_offsets(topic)[index] if group.from_end else 0
        if group.from_end:
            group.committed[partition] = start  # a group without a name starts at the end
        return start

    def _fetch(self, consumer: _MemoryConsumer, max_records: int) -> list[Message]:
        batch: list[Message] = []
        readable = consumer.readable
        count = len(readable)
        first = consumer.next_first
        consumer.next_first = first + 1 if first + 1 < count else 0
        positions = consumer.positions
        for step in range(count):
            topic, partition, records, starts = readable[(first + step) % count]
            base = starts[partition]
            start = positions[(topic, partition)] - base  # an index into the stored records
            if start >= len(records):
                continue
            if start < len(records) - self._keep:  # below the log start (start < 0 included)
                start = self._reset(consumer, topic, partition, base + start, base)
            taken = records[start : start + max_records - len(batch)]
            offset = base + start
            batch.extend(
                _message(topic, partition, offset + index, record)
                for index, record in enumerate(taken)
            )
            positions[(topic, partition)] = offset + len(taken)
            if len(batch) >= max_records:
                break
        return batch

    def _reset(
        self, consumer: _MemoryConsumer, topic: str, partition: int, position: int, base: int
    ) -> int:
        """A position below the log start: on from the log start, the skipped ones named."""
        log_start = self.start_offsets(topic)[partition]
        group = "(no group)" if consumer.group.from_end else consumer.group.name
        logger.warning(
            "memory:// group %s, %s[%d]: offset %d is below the log start %d (retention=%d"
            " messages a partition): %d messages dropped unread; reading on from %d",
            group,
            topic,
            partition,
            position,
            log_start,
            self._keep,
            log_start - position,
            log_start,
        )
        return log_start - base

    def _commit(self, consumer: _MemoryConsumer, offsets: Mapping[TopicPartition, int]) -> None:
        committed = consumer.group.committed
        for partition, offset in offsets.items():
            if partition in consumer.positions:  # a partition no longer owned: dropped
                committed[partition] = max(committed.get(partition, 0), offset)
        self._notify()


class _MemoryConsumer:
    """One subscriber's view of the memory broker: a member of its group."""

    def __init__(
        self,
        broker: MemoryBroker,
        group: _Group,
        topics: tuple[str, ...],
        assignment: Assignment,
    ) -> None:
        self._broker = broker
        self.group = group
        self.topics = topics
        self._assignment = assignment
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        # The assigned, unpaused partitions with their logs (and the logs' start offsets), as
        # the fetch reads them.
        self.readable: list[tuple[str, int, list[_Record], list[int]]] = []
        self.next_first = 0  # where the next fetch starts, so every partition gets its turn
        self._stopped = False
        self._closed = False
        self._woken: anyio.Event | None = None  # made only while a fetch waits

    def wake(self) -> None:
        """Something to read may have come (a send, a resume, a rebalance, a stop)."""
        if self._woken is not None:
            self._woken.set()
            self._woken = None

    async def give_up(self) -> None:
        """Hand every partition back; the pipeline finishes with them first."""
        owned = list(self.positions)
        if owned:
            await self._assignment.revoked(owned)
        self.positions = {}
        self.paused = set()
        self.readable = []

    def take(self, partitions: list[TopicPartition]) -> None:
        """Own ``partitions`` from the group's committed offsets on."""
        broker = self._broker
        self.positions = {p: broker._start_offset(self.group, p) for p in partitions}  # noqa: SLF001  # the broker's own consumer
        self.paused = set()
        self._refresh()
        self._assignment.assigned(partitions)

    def _refresh(self) -> None:
        topics = self._broker._topics  # noqa: SLF001  # the broker's own consumer
        self.readable = [
            (topic, partition, topics[topic].partitions[partition], topics[topic].starts)
            for topic, partition in self.positions
            if (topic, partition) not in self.paused
        ]

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
            if self._woken is None:
                self._woken = anyio.Event()
            await self._woken.wait()
            waited = True
        return []

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        self.paused.update(p for p in partitions if p in self.positions)
        self._refresh()

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        self.paused.difference_update(partitions)
        self._refresh()
        self.wake()

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self.positions)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        self._broker._commit(self, offsets)  # noqa: SLF001  # the broker's own consumer
        return {}  # a rebalance here happens whole, between commits

    async def status(self) -> list[PartitionStatus]:
        statuses = []
        for topic, partition in sorted(self.positions):
            end = self._broker.end_offsets(topic)[partition]
            committed = self.group.committed.get((topic, partition))
            statuses.append(PartitionStatus(topic, partition, committed, end))
        return statuses

    def stop(self) -> None:
        self._stopped = True
        self.wake()

    async def close(self) -> None:
        """Leave the group: the others share its partitions out again."""
        self.stop()
        if self._closed:
            return
        self._closed = True
        self.positions = {}
        self.readable = []
        self._broker._forget(self)  # noqa: SLF001  # the broker's own consumer
        await self._broker._rebalance(self.group, leaving=self)  # noqa: SLF001  # the broker's own consumer


def _message(topic: str, partition: int, offset: int, record: _Record) -> Message:
    value, key, headers, timestamp_ms = record
    if headers is None:
        return Message(topic, partition, offset, value, key, {}, timestamp_ms)
    return Message(
        topic, partition, offset, value, key, dict(headers), timestamp_ms, header_list=headers
    )


class _Refused:
    """The Delivery of a refused message: awaiting it raises the refusal."""

    __slots__ = ("error",)

    def __init__(self, error: SendRejectedError) -> None:
        self.error = error

    def __await__(self) -> Generator[Any, None, None]:
        return self._raise().__await__()

    async def _raise(self) -> None:
        raise self.error
