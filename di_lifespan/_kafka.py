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

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    RebalanceInProgressError,
)
from aiokafka.structs import ConsumerRecord, TopicPartition
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from ._broker import Delivery, Subscription
from ._embedded import EmbeddedKafka
from ._message import Message

__all__ = ["EmbeddedKafkaBroker", "KafkaBroker", "KafkaConsumer"]

logger = logging.getLogger("di_lifespan")

# Short enough for a quick first join on the embedded broker (it holds a first join for half
# the session timeout), long enough for a loaded machine's heartbeats.
SESSION_TIMEOUT_MS = 6_000
EMBEDDED_SESSION_TIMEOUT_MS = 2_000
CONNECT_TIMEOUT = 15.0  # seconds an unreachable broker is tried again at startup
POLL_MS = 100  # how long a fetch waits before it looks whether the consumer was stopped
PIN_TIMEOUT = 5.0  # seconds a consumer without a group waits to learn its partitions


class KafkaBroker:
    """A Kafka-protocol broker at ``bootstrap_servers`` (``"host:9092,host2:9092"``).

    ``client_options`` go to both aiokafka clients as they are (``security_protocol``,
    ``sasl_mechanism``, ``ssl_context``, ``client_id``...). ``idempotent`` turns the
    producer's idempotence on (the default; the embedded broker cannot serve it). A broker
    that does not answer at startup is tried again, with backoff, for ``connect_timeout``
    seconds (each attempt logged) before the start fails.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_options: Mapping[str, Any] | None = None,
        idempotent: bool = True,
        session_timeout_ms: int = SESSION_TIMEOUT_MS,
        connect_timeout: float = CONNECT_TIMEOUT,
        url: str | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.url = url or f"kafka://{bootstrap_servers}"
        self._options = dict(client_options or {})
        self._idempotent = idempotent
        self._session_timeout_ms = session_timeout_ms
        self._connect_timeout = connect_timeout
        self._producer: AIOKafkaProducer | None = None

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

    async def _connect_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            enable_idempotence=self._idempotent,
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
        if producer is not None:
            await producer.stop()

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> Delivery | None:
        """Queue the message in the producer; the returned Delivery is the broker's answer."""
        if self._producer is None:
            raise RuntimeError(f"the broker {self.url} is not started")
        delivery: Delivery = await self._producer.send(
            topic, value, key=key, headers=list(headers.items()) if headers else None
        )
        return delivery

    async def subscribe(self, subscription: Subscription) -> KafkaConsumer:
        """A consumer of the subscription's topics, started (and, with a group, joined)."""
        consumer = AIOKafkaConsumer(
            *subscription.topics,
            bootstrap_servers=self.bootstrap_servers,
            group_id=subscription.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if subscription.group else "latest",
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(self._session_timeout_ms // 4, 100),
            **self._options,
        )
        try:
            await consumer.start()
            if subscription.group is None:
                await _pin_positions(consumer)
        except BaseException:
            # Cut short (a time limit, a stop) or refused: close what was opened.
            with anyio.CancelScope(shield=True):
                await consumer.stop()
            raise
        return KafkaConsumer(consumer, grouped=subscription.group is not None)


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


class KafkaConsumer:
    """One subscriber's aiokafka consumer, as the pipeline's Consumer."""

    def __init__(self, consumer: AIOKafkaConsumer, *, grouped: bool) -> None:
        self._consumer = consumer
        self._grouped = grouped
        self._stopped = False

    async def fetch(self, max_records: int) -> Sequence[Message]:
        """Wait for messages; return up to ``max_records``, or none once stopped."""
        while not self._stopped:
            records = await self._consumer.getmany(timeout_ms=POLL_MS, max_records=max_records)
            if records:
                return [_message(record) for batch in records.values() for record in batch]
        return []

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit, per partition, the next offset to read (nothing without a group).

        Offsets of partitions this consumer no longer owns (a rebalance gave them to another
        member) are dropped, logged: their next owner reads those messages again.
        """
        if not self._grouped or not offsets:
            return
        owned = self._consumer.assignment()
        wanted = {
            TopicPartition(topic, partition): offset
            for (topic, partition), offset in offsets.items()
        }
        kept = {partition: offset for partition, offset in wanted.items() if partition in owned}
        try:
            if kept:
                await self._consumer.commit(kept)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as error:
            kept = {}
            logger.warning("commit dropped, the group is rebalancing: %s", error)
        if dropped := sorted(f"{tp.topic}[{tp.partition}]" for tp in wanted.keys() - kept.keys()):
            logger.info(
                "offsets of partitions given to another member not committed: %s",
                ", ".join(dropped),
            )

    def stop(self) -> None:
        """Make a waiting fetch, and every later one, return no messages."""
        self._stopped = True

    async def close(self) -> None:
        """Leave the group and disconnect."""
        self._stopped = True
        await self._consumer.stop()


def _message(record: ConsumerRecord[bytes, bytes]) -> Message:
    return Message(
        record.topic,
        record.partition,
        record.offset,
        record.value if record.value is not None else b"",
        record.key,
        dict(record.headers),
        record.timestamp,
    )
