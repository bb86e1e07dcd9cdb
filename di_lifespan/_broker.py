"""The one interface between the handler pipeline and a message transport.

Two transports implement it: ``MemoryBroker`` (``memory://``) and the Kafka transport. The
pipeline never learns which one it talks to; ``tests/contract`` runs the same tests on both.

The shape follows what Kafka needs to be fast and safe:

- A consumer reads the partitions its group assigns to it, and tells the pipeline (an
  ``Assignment`` given at subscribe) which ones it owns. Before any are taken away in a
  rebalance it awaits ``revoked``: the pipeline drops what it queued of them, finishes the
  message in hand and commits exactly those partitions; then the rebalance goes on.
- The pipeline keeps fetching while its handlers are busy (so the group never thinks it is
  dead) and pauses the partitions whose queue is full, resuming them once it has caught up.
- Sends are pipelined: ``send`` returns once the message is queued, with a Delivery to await
  for the broker's acknowledgement; an input's offset is committed only after everything it
  caused is acknowledged, in batches per partition.
- Errors are ``TransportError``: ``SendRejectedError`` for a message the broker refuses (raised
  by ``send`` or by its Delivery), ``BrokerUnavailableError`` once the broker stayed
  unreachable past the transport's bound. A commit for a partition no longer owned is dropped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._message import HeaderPairs, Message

__all__ = [
    "Assignment",
    "Broker",
    "Consumer",
    "Delivery",
    "PartitionStatus",
    "Subscription",
    "TopicPartition",
]

TopicPartition = tuple[str, int]
Delivery = Awaitable[None]


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a consumer reads: its topics, its consumer group, and who it is, for logs.

    Without a group a consumer reads every partition from the end of the log on and its
    commits are kept only for as long as it runs; with a group, partitions are shared among
    the group's consumers and reading resumes from the group's committed offsets (from the
    start of the log for a new group).
    """

    topics: tuple[str, ...]
    group: str | None
    name: str


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One assigned partition, for metrics: the group's committed offset, the log's end, lag.

    ``committed`` is None while the group has never committed on it; ``lag`` then counts
    from the start of the log.
    """

    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        """Messages in the partition the group has not committed yet."""
        return max(self.end - (self.committed or 0), 0)


class Assignment(Protocol):
    """The pipeline's side of a consumer: told which partitions it owns, as that changes."""

    def assigned(self, partitions: Collection[TopicPartition]) -> None:
        """These partitions are now this consumer's; reading resumes at their committed offset."""

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        """These partitions are being taken away: finish with them and commit, then return."""


class Consumer(Protocol):
    """Reads the partitions assigned to it; one per subscriber and run."""

    async def fetch(self, max_records: int) -> Sequence[Message]:
        """Wait for messages of unpaused partitions; up to ``max_records``; none once stopped.

        It keeps the consumer alive in its group while it waits, also with every partition
        paused. Raises TransportError when the broker cannot serve it.
        """

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        """Fetch nothing more from these partitions until ``resume``."""

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        """Fetch from these partitions again."""

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this consumer owns now."""

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> Mapping[TopicPartition, int]:
        """Record, per partition, the offset of the next message the group should read.

        Offsets of partitions this consumer no longer owns are dropped (logged): their next
        owner reads those messages again. Returns the offsets the group could not take now
        (it is rebalancing) but that are still this consumer's: commit them again. Raises
        BrokerUnavailableError when the broker stayed unreachable past the transport's bound.
        """

    async def status(self) -> list[PartitionStatus]:
        """The partitions this consumer owns, with committed and end offsets (for metrics)."""

    def stop(self) -> None:
        """Make a waiting fetch (and every later one) return no messages."""

    async def close(self) -> None:
        """Leave the group: its partitions, from their committed offsets, go to the others."""


class Broker(Protocol):
    """A connection to a message transport: one producer, and consumers made on demand."""

    url: str

    async def start(self) -> None:
        """Connect and start the producer."""

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: HeaderPairs | None = None,
    ) -> Delivery | None:
        """Queue a message; return what to await for its acknowledgement (None: already done).

        Raises SendRejectedError when the message cannot be sent (too large); the Delivery
        raises it when the broker refuses the message.
        """

    async def subscribe(self, subscription: Subscription, assignment: Assignment) -> Consumer:
        """A consumer subscribed to the subscription's topics, ready to fetch.

        ``assignment`` is told of every partition given to the consumer or taken from it.
        """

    async def stop(self) -> None:
        """Flush what is queued and disconnect."""
