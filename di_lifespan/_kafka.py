"""``kafka://`` and ``embedded://``: the transport on a Kafka-protocol broker, through aiokafka.

One producer per broker (``acks="all"``); one consumer per subscriber. A consumer with a group
joins it (partitions shared among its members, reading resumed from the group's committed
offsets, from the earliest offset for a new group) and commits only what the pipeline hands
it; a consumer without a group is given every partition of its topics and reads what arrives
after it started, committing nothing.

``embedded://`` starts an ``EmbeddedKafka`` (the Tansu broker of the ``embedded`` extra) with
the app and stops it with the app; every message is gone then. The producer's idempotence is
off there: aiokafka's InitProducerId request fails on Tansu.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Generator, Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    CorruptRecordException,
    IllegalStateError,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RebalanceInProgressError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.structs import ConsumerRecord, TopicPartition
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from ._broker import Assignment, Delivery, PartitionStatus, Subscription
from ._broker import TopicPartition as Partition
from ._embedded import EmbeddedKafka
from ._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    SendRejectedError,
    TransportError,
    describe,
)
from ._limits import is_stray_cancellation
from ._message import HeaderPairs, Message

__all__ = ["EmbeddedKafkaBroker", "KafkaBroker", "KafkaConsumer"]

logger = logging.getLogger("di_lifespan")

# Short enough for a quick first join on the embedded broker (it holds a first join for half
# the session timeout), long enough for a loaded machine's heartbeats.
SESSION_TIMEOUT_MS = 6_000
EMBEDDED_SESSION_TIMEOUT_MS = 2_000
CONNECT_TIMEOUT = 15.0  # seconds an unreachable broker is tried again at startup
POLL_MS = 100  # how long a fetch waits before it looks whether the consumer was stopped
PIN_TIMEOUT = 5.0  # seconds a consumer without a group waits to learn its partitions
# A batch's size limit unless max_batch_size says otherwise: aiokafka's 16 KiB default makes
# many small produce requests, each costing about what a large one does.
BATCH_BYTES = 262_144
BATCH_MESSAGES = 2000  # a batch holding this many messages is sent without waiting for more
COMMIT_TIMEOUT = 30.0  # seconds a commit is retried while the broker does not answer

# What the broker answers about one message, and would answer again: that message is refused.
REFUSALS = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    CorruptRecordException,
    InvalidTimestampError,
    TopicAuthorizationFailedError,
)


class KafkaBroker:
    """A Kafka-protocol broker at ``bootstrap_servers`` (``"host:9092,host2:9092"``).

    ``client_options`` go to both aiokafka clients as they are (``security_protocol``,
    ``sasl_mechanism``, ``ssl_context``, ``client_id``...), but for ``max_batch_size`` (256 KiB
    by default), which goes to the producer alone. ``idempotent`` turns the
    producer's idempotence on (the default; the embedded broker cannot serve it). A broker
    that does not answer at startup is tried again, with backoff, for ``connect_timeout``
    seconds (each attempt logged) before the start fails.

    ``create_topics`` maps topic names to partition counts: those the cluster does not have
    yet are created at start, with ``replication_factor`` replicas each (topics that exist
    are left as they are).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_options: Mapping[str, Any] | None = None,
        idempotent: bool = True,
        session_timeout_ms: int = SESSION_TIMEOUT_MS,
        connect_timeout: float = CONNECT_TIMEOUT,
        create_topics: Mapping[str, int] | None = None,
        replication_factor: int = 1,
        url: str | None = None,
    ) -> None:
        for topic, count in (create_topics or {}).items():
            _check_count(f"KafkaBroker(create_topics[{topic!r}])", count)
        _check_count("KafkaBroker(replication_factor)", replication_factor)
        self._create_topics = dict(create_topics or {})
        self._replication_factor = replication_factor
        self.bootstrap_servers = bootstrap_servers
        self.url = url or f"kafka://{bootstrap_servers}"
        self._options = dict(client_options or {})
        # The producer's alone: the consumer and the admin client take no such option.
        self._batch_bytes = int(self._options.pop("max_batch_size", BATCH_BYTES))
        self._idempotent = idempotent
        self._session_timeout_ms = session_timeout_ms
        self._connect_timeout = connect_timeout
        self._producer: AIOKafkaProducer | None = None
        self._batches: _Batches | None = None

    async def start(self) -> None:
        """Connect the producer; an unreachable broker is tried again until connect_timeout."""
        retrying = AsyncRetrying(
            stop=stop_after_delay(self._connect_timeout),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            retry=retry_if_exception_type(KafkaConnectionError),
            sleep=anyio.sleep,
            reraise=True,
            before_sleep=self._log_retry,
        )
        async for attempt in retrying:
            with attempt:
                self._producer = await self._connect_producer()
        self._batches = _Batches(self._producer, self.url, self._request_timeout, self._batch_bytes)
        if self._create_topics:
            await self._create_missing_topics()

    async def _create_missing_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, **self._options)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(topic, count, self._replication_factor)
                for topic, count in self._create_topics.items()
                if topic not in existing
            ]
            if wanted:
                await admin.create_topics(wanted)
                logger.info("created topics on %s: %s", self.url, ", ".join(t.name for t in wanted))
        except KafkaError as error:
            raise TransportError(self.url, "create topics", describe(error)) from error
        finally:
            with anyio.CancelScope(shield=True):
                await admin.close()

    async def _connect_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            enable_idempotence=self._idempotent,
            max_batch_size=self._batch_bytes,
            **self._options,
        )
        try:
            await producer.start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await producer.stop()  # a producer that failed to start still holds sockets
            raise
        return producer

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        logger.warning(
            "broker %s unreachable (attempt %d), trying again for up to %g s: %s",
            self.url,
            state.attempt_number,
            self._connect_timeout,
            error,
        )

    async def stop(self) -> None:
        """Flush what is queued and disconnect the producer."""
        producer, self._producer = self._producer, None
        batches, self._batches = self._batches, None
        if producer is not None:
            try:
                if batches is not None:
                    await batches.flush()
            finally:
                await producer.stop()

    async def reachable(self) -> bool:
        """Whether a broker of the cluster answers a (topic-less) metadata request now.

        For readiness probes; the caller bounds how long it waits.
        """
        if self._producer is None:
            return False
        client = self._producer.client
        node = client.get_random_node()
        if node is None:
            return False
        try:
            await client.send(node, MetadataRequest([]))
        except (TimeoutError, KafkaError, OSError):
            return False
        return True

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: HeaderPairs | None = None,
    ) -> Delivery | None:
        """Queue the message in the producer; the returned Delivery is the broker's answer.

        Raises SendRejectedError for a message the producer refuses before sending it (larger
        than its ``max_request_size``); the Delivery raises it for one the broker refuses.
        """
        if self._producer is None or self._batches is None:
            raise RuntimeError(f"the broker {self.url} is not started")
        pairs = list(headers) if headers else None
        batches = self._batches
        try:
            partitions = batches.partitions.get(topic) or await batches.learn(topic)
            joined, full = batches.add(topic, partitions, value, key, pairs)
            if full is not None:
                await batches.hand_over(full)
            if isinstance(joined, _Batch):
                return joined
            # Too large for a batch: the producer sends it alone (or refuses it), after what
            # was gathered before it for the same partition, so that order is kept.
            future = await self._producer.send(
                topic, value, key=key, headers=pairs, partition=joined
            )
        except KafkaError as error:
            raise _send_error(error, self.url, topic, self._request_timeout) from error
        return _Acknowledgement(future, self.url, topic, self._request_timeout)

    @property
    def _request_timeout(self) -> float:
        return float(self._options.get("request_timeout_ms", 40_000)) / 1000

    async def subscribe(self, subscription: Subscription, assignment: Assignment) -> KafkaConsumer:
        """A consumer of the subscription's topics, started (and, with a group, joined).

        Raises TransportError naming a topic the broker does not have.
        """
        grouped = subscription.group is not None
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=subscription.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if grouped else "latest",
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(self._session_timeout_ms // 4, 100),
            **self._options,
        )
        listener = _Listener(assignment) if grouped else None
        consumer.subscribe(list(subscription.topics), listener=listener)
        try:
            await consumer.start()
            await self._check_topics(consumer, subscription)
            if not grouped:
                await _pin_positions(consumer)
                assignment.assigned([(tp.topic, tp.partition) for tp in consumer.assignment()])
        except BaseException:
            # Cut short (a time limit, a stop) or refused: close what was opened.
            with anyio.CancelScope(shield=True):
                await consumer.stop()
            raise
        return KafkaConsumer(consumer, self.url, grouped=grouped)

    async def _check_topics(self, consumer: AIOKafkaConsumer, subscription: Subscription) -> None:
        """A topic the broker does not have is an error now, not a subscriber that waits."""
        existing = await consumer.topics()
        missing = [topic for topic in subscription.topics if topic not in existing]
        if missing:
            raise TransportError(
                self.url,
                f"subscribe {subscription.name}",
                f"no such topic: {', '.join(missing)} (create it first)",
            )


class EmbeddedKafkaBroker(KafkaBroker):
    """``embedded://``: a KafkaBroker on an EmbeddedKafka started and stopped with it."""

    def __init__(self, kafka: EmbeddedKafka | None = None) -> None:
        self._kafka = kafka or EmbeddedKafka()
        super().__init__(
            self._kafka.bootstrap_servers,
            idempotent=False,
            session_timeout_ms=EMBEDDED_SESSION_TIMEOUT_MS,
            url="embedded://",
        )

    async def start(self) -> None:
        """Start the embedded broker, then connect to it."""
        await anyio.to_thread.run_sync(self._kafka.start)
        try:
            await super().start()
        except BaseException:
            await self._stop_process()  # also when the start was cut short
            raise

    async def stop(self) -> None:
        """Disconnect, then stop the embedded broker (what it stored is gone)."""
        try:
            await super().stop()
        finally:
            await self._stop_process()

    async def _stop_process(self) -> None:
        # Shielded: a cancelled or forced stop must not leave the broker process running.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._kafka.stop)


async def _pin_positions(consumer: AIOKafkaConsumer) -> None:
    """Fix where a consumer without a group starts: at the end of each partition, now.

    Left alone, the position is looked up at the first fetch, so a message sent between the
    subscribe and that fetch would be skipped.
    """
    with anyio.move_on_after(PIN_TIMEOUT):
        # A topic that exists is assigned within moments; aiokafka has no event for it.
        while not consumer.assignment():  # noqa: ASYNC110  # polling is all there is
            await anyio.sleep(0.01)
    for partition in consumer.assignment():
        await consumer.position(partition)


class _Batches:
    """Sends gathered per partition, each batch handed to the producer as one.

    A batch is sent when it is full, or when a Delivery of it (or of any open batch) is
    awaited: the pipeline awaits deliveries only when it commits, so everything its handlers
    sent since the last commit goes out together, one request per partition. This saves the
    producer's per-message work (a send per message costs several times a batch append).
    Keys are placed by Kafka's default partitioner (murmur2), keyless messages at random.
    """

    def __init__(
        self, producer: AIOKafkaProducer, url: str, timeout: float, batch_bytes: int
    ) -> None:
        self._producer = producer
        self._batch_bytes = batch_bytes
        self._url = url
        self._timeout = timeout
        self._open: dict[tuple[str, int], _Batch] = {}
        self.partitions: dict[str, list[int]] = {}  # a topic's, once learned
        self._partitioner = DefaultPartitioner()
        self._sticky: dict[str, int] = {}  # where a topic's keyless messages go now
        self._locks: dict[tuple[str, int], anyio.Lock] = {}  # one hand-over at a time

    def add(
        self,
        topic: str,
        partitions: list[int],
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> tuple[_Batch | int, _Batch | None]:
        """Where the message went, and a batch to hand over now (or None).

        Where it went is the batch it joined; or, for a message too large for a batch, its
        partition: the producer sends it alone, after the batch gathered for that partition,
        which is then the one to hand over. Nothing is awaited here, so concurrent senders
        never lose a batch.
        """
        partition = self._place(topic, key, partitions)
        where = (topic, partition)
        size = len(value)
        if key is not None:
            size += len(key)
        if headers:
            # a header read from Kafka may have a null value: the dead letter sends it back
            size += sum(len(name) + len(value or b"") for name, value in headers)
        if size > self._batch_bytes:
            return partition, self._open.pop(where, None)
        batch = self._open.get(where)
        if batch is None:
            batch = self._open[where] = _Batch(self, self._producer.create_batch(), where)
        if batch.append(value, key, headers):
            if batch.count < BATCH_MESSAGES:
                return batch, None
            del self._open[where]
            return batch, batch
        # Full: a fresh batch takes its place before the full one is handed over.
        fresh = self._open[where] = _Batch(self, self._producer.create_batch(), where)
        if fresh.append(value, key, headers):
            return fresh, batch
        del self._open[where]
        return partition, batch

    def _place(self, topic: str, key: bytes | None, partitions: list[int]) -> int:
        """A key's partition by murmur2; keyless messages stick to one partition per batch.

        Sticking fills one batch at a time instead of a few messages in each (Kafka's own
        producer does the same since 2.4); the next batch goes to another partition.
        """
        if key is not None:
            partition: int = self._partitioner(key, partitions, partitions)
            return partition
        sticky = self._sticky.get(topic)
        if sticky is None or (topic, sticky) not in self._open:
            sticky = self._sticky[topic] = self._partitioner(None, partitions, partitions)
        return sticky

    async def learn(self, topic: str) -> list[int]:
        """The topic's partitions, asked of the cluster once."""
        try:
            found = await self._producer.partitions_for(topic)
        except KafkaError as error:
            raise BrokerUnavailableError(
                self._url, f"send to {topic}", describe(error), waited=self._timeout
            ) from error
        partitions = self.partitions[topic] = sorted(found)
        return partitions

    def is_open(self, batch: _Batch) -> bool:
        return self._open.get(batch.where) is batch

    async def flush(self) -> None:
        """Hand every open batch over to the producer."""
        batches, self._open = self._open, {}
        await self.hand_over(*batches.values())

    async def hand_over(self, *batches: _Batch | None) -> None:
        """Send ``batches``: taken from _open, each must reach the producer or fail its waiters.

        Shielded from the app's cancellations. A native asyncio cancellation (a caller's
        ``asyncio.wait_for``) still gets through: the batches not handed over then fail with
        a TransportError, so that no waiter hangs; their inputs are not committed.
        """
        pending = [batch for batch in batches if batch is not None]
        try:
            with anyio.CancelScope(shield=True):
                while pending:
                    await self._send(pending[0])
                    pending.pop(0)
        except BaseException:
            for batch in pending:
                if not batch.sent.is_set():
                    batch.error = TransportError(
                        self._url, f"send to {batch.where[0]}", "the hand-over was cancelled"
                    )
                    batch.sent.set()
            raise

    async def _send(self, batch: _Batch) -> None:
        """Hand one batch to the producer, after the batches of its partition handed earlier.

        The partition's lock is taken before the first pause when it is free, so batches
        reach the producer in the order their hand-over began: the order of the partition.
        """
        topic, partition = batch.where
        lock = self._locks.get(batch.where)
        if lock is None:
            lock = self._locks[batch.where] = anyio.Lock()
        async with lock:
            try:
                batch.future = await self._producer.send_batch(
                    batch.builder, topic, partition=partition
                )
            except Exception as error:  # noqa: BLE001  # handed to the waiters, mapped there
                batch.error = error
            except BaseException:
                batch.error = TransportError(
                    self._url, f"send to {topic}", "the hand-over was cancelled"
                )
                raise
            finally:
                batch.sent.set()

    def refusal(self, error: Exception, topic: str) -> TransportError:
        return _send_error(error, self._url, topic, self._timeout)


class _Batch:
    """Messages for one partition, sent as one; the Delivery of each of them."""

    __slots__ = ("batches", "builder", "count", "error", "future", "sent", "where")

    def __init__(self, batches: _Batches, builder: Any, where: tuple[str, int]) -> None:
        self.batches = batches
        self.builder = builder
        self.where = where
        self.future: asyncio.Future[Any] | None = None
        self.error: Exception | None = None
        self.sent = anyio.Event()
        self.count = 0

    def append(
        self, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> bool:
        added = self.builder.append(key=key, value=value, timestamp=None, headers=headers or [])
        self.count += 1
        return added is not None

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()

    async def _wait(self) -> None:
        if self.batches.is_open(self):
            await self.batches.flush()
        if not self.sent.is_set():  # another task is sending it
            await self.sent.wait()
        if self.error is not None:
            refusal = self.batches.refusal(self.error, self.where[0])
            if refusal is self.error:
                raise refusal
            raise refusal from self.error
        assert self.future is not None  # handed over without error  # noqa: S101
        try:
            # Shielded: a cancelled waiter must not cancel the answer every waiter shares.
            await asyncio.shield(self.future)
        except KafkaError as error:
            raise self.batches.refusal(error, self.where[0]) from error


class _Acknowledgement:
    """A send's Delivery: the broker's answer, its refusal as SendRejectedError."""

    __slots__ = ("_future", "_timeout", "_topic", "_url")

    def __init__(self, future: asyncio.Future[Any], url: str, topic: str, timeout: float) -> None:
        self._future = future
        self._url = url
        self._topic = topic
        self._timeout = timeout

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()

    async def _wait(self) -> None:
        try:
            await asyncio.shield(self._future)  # a cancelled waiter leaves the send alone
        except KafkaError as error:
            raise _send_error(error, self._url, self._topic, self._timeout) from error


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped here
    """Tells the pipeline of partitions given and taken; a revoke waits for the pipeline."""

    def __init__(self, assignment: Assignment) -> None:
        self._assignment = assignment

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        if revoked:
            await self._assignment.revoked([(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self._assignment.assigned([(tp.topic, tp.partition) for tp in assigned])


class KafkaConsumer:
    """One subscriber's aiokafka consumer, as the pipeline's Consumer."""

    def __init__(self, consumer: AIOKafkaConsumer, url: str, *, grouped: bool) -> None:
        self._consumer = consumer
        self._url = url
        self._grouped = grouped
        self._stopped = False

    async def fetch(self, max_records: int) -> Sequence[Message]:
        """Poll until messages come (paused partitions give none); none once stopped.

        Polling goes on while every partition is paused: that is what keeps the consumer a
        live member of its group (``max_poll_interval_ms``).
        """
        while not self._stopped:
            try:
                records = await self._consumer.getmany(timeout_ms=POLL_MS, max_records=max_records)
            except KafkaError as error:
                raise TransportError(self._url, "fetch", describe(error)) from error
            if records:
                return [_message(record) for batch in records.values() for record in batch]
        return []

    def pause(self, partitions: Collection[Partition]) -> None:
        owned = self._consumer.assignment()
        wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
        self._consumer.pause(*(tp for tp in wanted if tp in owned))

    def resume(self, partitions: Collection[Partition]) -> None:
        owned = self._consumer.assignment()
        wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
        self._consumer.resume(*(tp for tp in wanted if tp in owned))

    def assignment(self) -> frozenset[Partition]:
        return frozenset((tp.topic, tp.partition) for tp in self._consumer.assignment())

    async def status(self) -> list[PartitionStatus]:
        """Assigned partitions with the group's committed offset and the log's end.

        The end is the broker's high watermark, or this consumer's position when that is
        further (the embedded broker reports a log's end as its last batch's first offset + 1).
        """
        owned = sorted(self._consumer.assignment())
        if not owned:
            return []
        ends = await self._consumer.end_offsets(owned)
        statuses = []
        for tp in owned:
            committed = await self._consumer.committed(tp) if self._grouped else None
            end = max(ends.get(tp, 0), await self._consumer.position(tp), committed or 0)
            statuses.append(PartitionStatus(tp.topic, tp.partition, committed, end))
        return statuses

    async def commit(self, offsets: Mapping[Partition, int]) -> dict[Partition, int]:
        """Commit, per partition, the next offset to read (nothing without a group).

        Offsets of partitions this consumer no longer owns (a rebalance gave them to another
        member) are dropped, logged: their next owner reads those messages again. Offsets the
        group refused because it is rebalancing are returned, to be committed again (in the
        revoke, or once the rebalance is over). A broker that does not answer is tried
        again, with backoff, for ``COMMIT_TIMEOUT`` seconds.
        """
        if not self._grouped or not offsets:
            return {}
        owned = self._consumer.assignment()
        wanted = {
            TopicPartition(topic, partition): offset
            for (topic, partition), offset in offsets.items()
        }
        kept = {partition: offset for partition, offset in wanted.items() if partition in owned}
        again: dict[Partition, int] = {}
        try:
            if kept:
                await self._commit(kept)
        except RebalanceInProgressError:
            again = {(tp.topic, tp.partition): offset for tp, offset in kept.items()}
            logger.info("commit held back until the group's rebalance is over")
        except (CommitFailedError, IllegalStateError) as error:
            kept = {}
            logger.warning("commit dropped, the group rebalanced: %s", error)
        if dropped := sorted(f"{tp.topic}[{tp.partition}]" for tp in wanted.keys() - kept.keys()):
            logger.info(
                "offsets of partitions given to another member not committed: %s",
                ", ".join(dropped),
            )
        return again

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        retrying = AsyncRetrying(
            stop=stop_after_delay(COMMIT_TIMEOUT),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            retry=retry_if_exception(_retriable),
            sleep=anyio.sleep,
            reraise=True,
            before_sleep=self._log_retry,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._consumer.commit(offsets)
        except KafkaError as error:
            if not _retriable(error):
                raise
            raise BrokerUnavailableError(
                self._url, "commit", describe(error), waited=COMMIT_TIMEOUT
            ) from error

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        logger.warning(
            "commit on %s failed (attempt %d), trying again for up to %g s: %s",
            self._url,
            state.attempt_number,
            COMMIT_TIMEOUT,
            error,
        )

    def stop(self) -> None:
        """Make a waiting fetch, and every later one, return no messages."""
        self._stopped = True

    async def close(self) -> None:
        """Leave the group and disconnect.

        aiokafka's stop can let out a CancelledError of its own (it cancels a fetch sleeping
        in its error backoff, and awaits it): that is a failed close, not a cancellation.
        """
        self._stopped = True
        try:
            await self._consumer.stop()
        except asyncio.CancelledError as error:
            if not is_stray_cancellation(error):
                raise
            raise TransportError(
                self._url, "leave the group", "the client's stop was cut short"
            ) from error


def _check_count(where: str, count: object) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigurationError(where, f"expected a positive whole number, got {count!r}")


def _send_error(error: Exception, url: str, topic: str, waited: float) -> TransportError:
    """What a failed send to ``topic`` is: refused for that message, or the broker gone."""
    if isinstance(error, TransportError):
        return error
    if isinstance(error, REFUSALS):
        return SendRejectedError(url, topic, _refusal(error))
    if isinstance(error, KafkaError):
        return BrokerUnavailableError(url, f"send to {topic}", describe(error), waited=waited)
    return TransportError(url, f"send to {topic}", describe(error))


def _refusal(error: KafkaError) -> str:
    """Why the broker refused a message, in words that say so first."""
    too_large = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
    if isinstance(error, too_large):
        return f"the message is too large: {describe(error)}"
    return describe(error)


def _retriable(error: BaseException) -> bool:
    return isinstance(error, KafkaError) and bool(getattr(error, "retriable", False))


def _message(record: ConsumerRecord[bytes, bytes]) -> Message:
    value = record.value if record.value is not None else b""
    if not record.headers:
        return Message(
            record.topic, record.partition, record.offset, value, record.key, {}, record.timestamp
        )
    headers = tuple(record.headers)
    return Message(
        record.topic,
        record.partition,
        record.offset,
        value,
        record.key,
        dict(headers),
        record.timestamp,
        header_list=headers,
    )
