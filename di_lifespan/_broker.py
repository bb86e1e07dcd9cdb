"""The one interface between the handler pipeline and a message transport.

Two transports implement it: ``MemoryBroker`` (``memory://``) and the Kafka transport. The
pipeline never learns which one it talks to; ``tests/contract`` runs the same tests on both.

The shape follows what Kafka needs to be fast and safe: consumers fetch batches across the
partitions assigned to them and commit the next offset per partition in batches; sends are
pipelined (``send`` returns once the message is queued, with a Delivery to await for the
broker's acknowledgement), and the pipeline commits an input's offset only after every
message it caused has been acknowledged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._message import Message

__all__ = ["Broker", "Consumer", "Delivery", "Subscription", "TopicPartition"]

TopicPartition = tuple[str, int]
Delivery = Awaitable[None]


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a consumer reads: its topics, its consumer group, and who it is, for logs.

    Without a group a consumer reads every partition from the end of the log on; with a
    group, partitions are shared among the group's consumers and reading resumes from the
    group's committed offsets (from the start of the log for a new group).
    """

    topics: tuple[str, ...]
    group: str | None
    name: str


class Consumer(Protocol):
    """Reads the partitions assigned to it; one per subscriber and run."""

    async def fetch(self, max_records: int) -> Sequence[Message]:
        """Wait for messages and return up to ``max_records``; empty once stop() was called."""

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record, per partition, the offset of the next message the group should read."""

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
        headers: Mapping[str, bytes] | None = None,
    ) -> Delivery | None:
        """Queue a message; return what to await for its acknowledgement (None: already done)."""

    async def subscribe(self, subscription: Subscription) -> Consumer:
        """A consumer subscribed to the subscription's topics, ready to fetch."""

    async def stop(self) -> None:
        """Flush what is queued and disconnect."""
