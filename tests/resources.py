"""What the tests share: providers that record what happens to them, brokers, pytest runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from dishka.provider import BaseProvider

from di_lifespan import (
    App,
    Broker,
    Consumer,
    MemoryBroker,
    Message,
    Provider,
    Scope,
    Subscription,
    provide,
)
from di_lifespan._broker import Assignment, Delivery, PartitionStatus, TopicPartition
from di_lifespan._message import HeaderPairs


class Journal:
    """An ordered record of setups ("+Name"), finalizers ("-Name") and other events."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def __call__(self, event: str) -> None:
        self.events.append(event)

    def setups(self) -> list[str]:
        return [event[1:] for event in self.events if event.startswith("+")]

    def finalizers(self) -> list[str]:
        return [event[1:] for event in self.events if event.startswith("-")]


class Settings:
    """The shared root of the diamond."""


class Database:
    """One side of the diamond."""


class Cache:
    """The other side of the diamond."""


class Service:
    """The top of the diamond: needs Database and Cache, which both need Settings."""


class Diamond(Provider):
    """Settings -> (Database, Cache) -> Service; Cache finishes its setup before Database."""

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal
        self.cache_ready = anyio.Event()

    @provide(scope=Scope.APP)
    async def settings(self) -> AsyncIterator[Settings]:
        self.journal("+Settings")
        yield Settings()
        self.journal("-Settings")

    @provide(scope=Scope.APP)
    async def database(self, settings: Settings) -> AsyncIterator[Database]:
        await self.cache_ready.wait()  # makes the creation order exact: Cache, then Database
        self.journal("+Database")
        yield Database()
        self.journal("-Database")

    @provide(scope=Scope.APP)
    def cache(self, settings: Settings) -> Iterator[Cache]:
        self.journal("+Cache")
        self.cache_ready.set()
        yield Cache()
        self.journal("-Cache")

    @provide(scope=Scope.APP)
    async def service(self, database: Database, cache: Cache) -> AsyncIterator[Service]:
        self.journal("+Service")
        yield Service()
        self.journal("-Service")


def app_on_memory(*providers: BaseProvider, **options: Any) -> tuple[App, MemoryBroker]:
    """An app on a memory broker of its own, and that broker, to read topics and offsets from."""
    broker = MemoryBroker()
    return App(*providers, broker=broker, **options), broker


# --- test brokers: a real broker inside, acknowledgements and refusals scripted -----------

CAUSE = "cause"  # header naming the input a message was caused by: "topic[partition]@offset"


class RecordingBroker:
    """Passes everything to ``inner``; records what its consumers commit, and checks it.

    A message sent with a ``cause`` header (``message.coordinates`` of the input that caused
    it) must be acknowledged before that input's offset is committed. ``violations`` lists
    every commit (or later send) that broke this rule.
    """

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.url = f"recording+{inner.url}"
        self.committed: dict[TopicPartition, int] = {}
        self.violations: list[str] = []
        self.caused: list[Caused] = []
        self._changed = anyio.Event()

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: HeaderPairs | None = None,
    ) -> Delivery | None:
        delivery = await self.inner.send(topic, value, key=key, headers=headers)
        cause = dict(headers or ()).get(CAUSE)
        if cause is None:
            return delivery
        caused = Caused(topic, value, _coordinates(cause.decode()), delivery)
        if self._is_committed(caused.cause):
            self.violations.append(f"{caused} sent after its input was committed")
        self.caused.append(caused)
        self.changed()
        return self.acknowledgement(caused)

    def acknowledgement(self, caused: Caused) -> Delivery | None:
        """What ``send`` returns for a caused message; here, the inner broker's own."""
        return caused.inner

    async def subscribe(self, subscription: Subscription, assignment: Assignment) -> Consumer:
        return _RecordingConsumer(await self.inner.subscribe(subscription, assignment), self)

    def record_commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        for (topic, partition), offset in offsets.items():
            for caused in self.caused:
                cause_topic, cause_partition, cause_offset = caused.cause
                if (
                    (cause_topic, cause_partition) == (topic, partition)
                    and cause_offset < offset
                    and not caused.acknowledged
                ):
                    self.violations.append(
                        f"{topic}[{partition}] committed to {offset} before {caused} was acked"
                    )
            previous = self.committed.get((topic, partition), 0)
            self.committed[(topic, partition)] = max(previous, offset)
        self.changed()

    def committed_count(self, topic: str) -> int:
        """How many messages of ``topic`` are committed (a fresh topic's offsets start at 0)."""
        return sum(offset for (name, _), offset in self.committed.items() if name == topic)

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for_change(self) -> None:
        await self._changed.wait()

    def _is_committed(self, coordinates: tuple[str, int, int]) -> bool:
        topic, partition, offset = coordinates
        return self.committed.get((topic, partition), 0) > offset


@dataclass
class Caused:
    """A message sent because of an input; acknowledged once its Delivery completed."""

    topic: str
    value: bytes
    cause: tuple[str, int, int]
    inner: Delivery | None
    acknowledged: bool = False
    released: anyio.Event = field(default_factory=anyio.Event)

    def __str__(self) -> str:
        topic, partition, offset = self.cause
        return f"{self.topic} {self.value!r} (caused by {topic}[{partition}]@{offset})"


class LateAcks(RecordingBroker):
    """Holds back the acknowledgement of each caused message until the test releases it."""

    def acknowledgement(self, caused: Caused) -> Delivery:
        return _HeldAck(caused)

    def unacknowledged(self) -> list[Caused]:
        """Caused messages sent and not yet released, oldest first."""
        return [caused for caused in self.caused if not caused.released.is_set()]

    def release(self, caused: Caused) -> None:
        caused.released.set()

    @contextmanager
    def released_at_exit(self) -> Iterator[None]:
        """Release whatever is still held when the block ends, however it ends.

        Wrap a test's body inside ``async with app:``: a test that fails while acks are held
        must not leave the app's shutdown waiting for them forever.
        """
        try:
            yield
        finally:
            for caused in self.unacknowledged():
                self.release(caused)


class _HeldAck:
    """A Delivery that completes once the test releases it (and the inner one completed)."""

    def __init__(self, caused: Caused) -> None:
        self._caused = caused

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()

    async def _wait(self) -> None:
        await self._caused.released.wait()
        if self._caused.inner is not None:
            await self._caused.inner
        self._caused.acknowledged = True


class Refusing(RecordingBroker):
    """Refuses every message to ``topics``: ``send`` raises, or (``when="ack"``) its Delivery.

    A refused message is not stored.
    """

    def __init__(self, inner: Broker, topics: Collection[str], *, when: str = "send") -> None:
        super().__init__(inner)
        self.topics = frozenset(topics)
        self.when = when
        self.refused: list[str] = []

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: HeaderPairs | None = None,
    ) -> Delivery | None:
        if topic not in self.topics:
            return await super().send(topic, value, key=key, headers=headers)
        self.refused.append(topic)
        error = ConnectionError(f"broker refused a message to {topic}")
        if self.when == "send":
            raise error
        return _Failed(error)


class _Failed:
    """A Delivery whose acknowledgement is a refusal (raised when awaited, not before)."""

    def __init__(self, error: Exception) -> None:
        self._error = error

    def __await__(self) -> Generator[Any, None, None]:
        return self._refuse().__await__()

    async def _refuse(self) -> None:
        raise self._error


class _RecordingConsumer:
    def __init__(self, inner: Consumer, broker: RecordingBroker) -> None:
        self._inner = inner
        self._broker = broker

    async def fetch(self, max_records: int) -> Sequence[Message]:
        return await self._inner.fetch(max_records)

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        self._inner.pause(partitions)

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        self._inner.resume(partitions)

    def assignment(self) -> frozenset[TopicPartition]:
        return self._inner.assignment()

    async def status(self) -> list[PartitionStatus]:
        return await self._inner.status()

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> Mapping[TopicPartition, int]:
        self._broker.record_commit(offsets)
        return await self._inner.commit(offsets)

    def stop(self) -> None:
        self._inner.stop()

    async def close(self) -> None:
        await self._inner.close()


def _coordinates(text: str) -> tuple[str, int, int]:
    """Parse ``topic[partition]@offset`` (Message.coordinates)."""
    topic, rest = text.rsplit("[", 1)
    partition, offset = rest.split("]@")
    return topic, int(partition), int(offset)


# --- running pytest on a made-up project ------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str
) -> pytest.RunResult:
    """Run pytest on ``pytester``'s project in a new interpreter that imports this checkout.

    pytester puts only the project on the child's path; without this checkout first there,
    the child would import whichever di_lifespan is installed.
    """
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    # Hypothesis is not part of such a project, and its plugin alone costs seconds a run.
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:hypothesispytest", *args
    )
