"""The Kafka transport as an app uses it: broker URLs, and a whole run on an embedded broker."""

from __future__ import annotations

import re
import uuid
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import BaseModel

from di_lifespan import App, ConfigurationError, Message, StartupError
from di_lifespan.kafka import EmbeddedKafka, EmbeddedKafkaBroker, KafkaBroker


class Order(BaseModel):
    """An input body."""

    item: str
    quantity: int


def test_a_kafka_url_names_its_bootstrap_servers_and_connects_nothing() -> None:
    """kafka://h1:9092,h2:9093 makes a KafkaBroker for both addresses, unconnected."""
    app = App(broker="kafka://kafka-1:9092, kafka-2:9093")
    assert isinstance(app.broker, KafkaBroker)
    assert app.broker.bootstrap_servers == "kafka-1:9092,kafka-2:9093"
    assert app.broker.url == "kafka://kafka-1:9092,kafka-2:9093"


@pytest.mark.parametrize(
    ("url", "address"),
    [("kafka://kafka-1", "'kafka-1'"), ("kafka://:9092", "':9092'"), ("kafka://h:0", "'h:0'")],
)
def test_a_kafka_url_without_a_usable_address_is_refused(url: str, address: str) -> None:
    """A kafka:// URL whose address lacks a host or a valid port is a ConfigurationError."""
    with pytest.raises(ConfigurationError) as caught:
        App(broker=url)
    assert str(caught.value) == (
        f"App(broker=...): {url!r}: expected kafka://host:port[,host:port...], got {address}"
    )


def test_a_kafka_url_with_credentials_is_refused_without_echoing_them() -> None:
    """kafka://user:secret@host is refused: the error points to SASL options, never shows it."""
    with pytest.raises(ConfigurationError, match="carries no credentials") as raised:
        App(broker="kafka://user:s3cret@kafka-1:9092")
    assert "s3cret" not in str(raised.value)
    assert "sasl_plain_password" in str(raised.value)


def test_an_embedded_url_makes_a_broker_started_with_the_app() -> None:
    """embedded:// makes an EmbeddedKafkaBroker; nothing starts before the app does."""
    app = App(broker="embedded://")
    assert isinstance(app.broker, EmbeddedKafkaBroker)
    assert app.broker.url == "embedded://"


async def test_a_whole_run_on_the_embedded_broker_handles_publishes_and_commits() -> None:
    """On embedded://, a handler reads a JSON order, publishes its result, and the run stops."""
    app = App(broker="embedded://", graceful_timeout=5)
    seen: list[str] = []
    done = anyio.Event()

    @app.subscriber("orders", group="shop")
    @app.publisher("invoices")
    async def invoice(order: Order, message: Message) -> dict[str, object]:
        seen.append(f"{order.item}@{message.offset}")
        return {"item": order.item, "total": order.quantity * 3}

    @app.subscriber("invoices", group="audit")
    async def audit(invoice: dict[str, object]) -> None:
        seen.append(f"invoice {invoice['item']} {invoice['total']}")
        done.set()

    with anyio.fail_after(30):
        async with app:
            await app.publish("orders", Order(item="pear", quantity=2), key="customer-1")
            await done.wait()
    assert seen == ["pear@0", "invoice pear 6"]
    report = app.startup_report
    assert report is not None
    assert report.broker == "embedded://"


async def test_max_batch_size_reaches_the_producer_alone(kafka_bootstrap: str) -> None:
    """max_batch_size (a producer option) sizes the batches; the consumer never gets it."""
    topic = f"small-batches-{uuid.uuid4().hex[:10]}"
    broker = KafkaBroker(
        kafka_bootstrap,
        idempotent=False,
        session_timeout_ms=2_000,
        create_topics={topic: 1, f"{topic}.out": 1},
        client_options={"max_batch_size": 2_048},
    )
    app = App(broker=broker, graceful_timeout=5)
    seen: list[int] = []
    done = anyio.Event()

    @app.subscriber(topic, group="small")
    @app.publisher(f"{topic}.out")
    async def relay(number: int) -> bytes:
        seen.append(number)
        if len(seen) == 30:
            done.set()
        return b"y" * 500  # four fill a batch

    with anyio.fail_after(30):
        async with app:
            for number in range(30):
                await app.publish(topic, number, key="one")
            await done.wait()
    assert seen == list(range(30))
    assert len(await read_values(kafka_bootstrap, f"{topic}.out", 30)) == 30


async def test_an_unreachable_broker_fails_the_start_naming_it_after_its_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nobody listening: connecting is tried again until connect_timeout, then StartupError."""
    app = App(broker=KafkaBroker("127.0.0.1:1", connect_timeout=0.3))
    began = anyio.current_time()
    with pytest.raises(StartupError) as caught:
        async with app:
            pytest.fail("the app must not start")
    assert anyio.current_time() - began >= 0.3
    assert str(caught.value).startswith(
        "the broker (kafka://127.0.0.1:1) failed to start: KafkaConnectionError: Unable to"
    )
    retries = [r.getMessage() for r in caplog.records if "unreachable (attempt" in r.getMessage()]
    assert retries
    assert retries[0].startswith("broker kafka://127.0.0.1:1 unreachable (attempt 1)")


async def test_a_broker_that_comes_up_late_is_waited_for() -> None:
    """An app started before its broker connects once the broker answers."""
    kafka = EmbeddedKafka()
    app = App(broker=KafkaBroker(kafka.bootstrap_servers, idempotent=False, connect_timeout=20))
    try:
        async with anyio.create_task_group() as group:

            async def start_the_broker_late() -> None:
                await anyio.sleep(0.5)
                await anyio.to_thread.run_sync(kafka.start)

            group.start_soon(start_the_broker_late)
            with anyio.fail_after(30):
                async with app:
                    assert app.status == "running"
    finally:
        await anyio.to_thread.run_sync(kafka.stop)


async def test_create_topics_makes_missing_topics_and_leaves_existing_ones(
    kafka_bootstrap: str,
) -> None:
    """KafkaBroker(create_topics=) creates what is missing at start, with its partitions."""
    topic = f"created-{uuid.uuid4().hex[:10]}"
    for _ in range(2):  # the second start finds it there and leaves it alone
        broker = KafkaBroker(kafka_bootstrap, idempotent=False, create_topics={topic: 4})
        await broker.start()
        await broker.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        assert await consumer.topics() >= {topic}
        assert consumer.partitions_for_topic(topic) == {0, 1, 2, 3}
    finally:
        await consumer.stop()


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"create_topics": {"t": 0}}, "KafkaBroker(create_topics['t'])"),
        ({"replication_factor": True}, "KafkaBroker(replication_factor)"),
    ],
)
def test_bad_topic_counts_are_refused(options: dict[str, Any], where: str) -> None:
    """A partition count or replication factor that is not a positive whole number is refused."""
    with pytest.raises(ConfigurationError, match=re.escape(where)):
        KafkaBroker("localhost:9092", **options)


async def test_concurrent_senders_filling_batches_lose_nothing_and_keep_order(
    kafka_bootstrap: str,
) -> None:
    """Two tasks sending 1 KiB messages to one partition: every one arrives, in each's order."""
    topic = f"batches-{uuid.uuid4().hex[:10]}"
    broker = KafkaBroker(
        kafka_bootstrap,
        idempotent=False,
        create_topics={topic: 1},
        client_options={"max_batch_size": 16_384},
    )
    await broker.start()
    try:
        deliveries: list[Any] = []

        async def send(name: str) -> None:
            for number in range(200):  # about 15 fill a batch: many hand-overs while others add
                value = f"{name}-{number:03}-".encode() + b"x" * 1_000
                deliveries.append(await broker.send(topic, value, key=b"one"))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as senders:
                senders.start_soon(send, "a")
                senders.start_soon(send, "b")
            for delivery in deliveries:
                await delivery
        values = await read_values(kafka_bootstrap, topic, 400)
    finally:
        await broker.stop()
    for name in ("a", "b"):
        mine = [value[:5] for value in values if value.startswith(name.encode())]
        assert mine == [f"{name}-{number:03}".encode() for number in range(200)]


async def test_a_publish_cancelled_mid_flush_leaves_the_other_deliveries_whole(
    kafka_bootstrap: str,
) -> None:
    """A caller's time limit ends its wait, not the hand-over: every other delivery completes."""
    topic = f"flush-{uuid.uuid4().hex[:10]}"
    broker = KafkaBroker(kafka_bootstrap, idempotent=False, create_topics={topic: 4})
    await broker.start()
    try:
        deliveries = [
            await broker.send(topic, f"{number}".encode(), key=f"k{number}".encode())
            for number in range(40)
        ]
        with anyio.move_on_after(0):  # cancelled at its first pause, inside the flush
            await deliveries[0]  # type: ignore[misc]  # a Delivery, not None, on Kafka
        with anyio.fail_after(30):
            for delivery in deliveries:
                await delivery  # type: ignore[misc]  # as above
        assert len(await read_values(kafka_bootstrap, topic, 40)) == 40
    finally:
        await broker.stop()


async def read_values(bootstrap: str, topic: str, count: int) -> list[bytes]:
    """Read ``count`` values of ``topic`` from its start, without a group."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        with anyio.fail_after(30):
            while len(values) < count:
                batches = await consumer.getmany(timeout_ms=200)
                values += [r.value for records in batches.values() for r in records if r.value]
    finally:
        await consumer.stop()
    return values
