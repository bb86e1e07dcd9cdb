"""The pytest plugin's fixtures: a client per test from your app, one Kafka broker per session."""

from __future__ import annotations

import socket
import struct

import pytest

from di_lifespan import App, FromDishka, Provider, Scope, provide
from di_lifespan.testing import TestClient, override


class Greeting:
    def __init__(self, text: str) -> None:
        self.text = text


class Greetings(Provider):
    @provide(scope=Scope.APP)
    def greeting(self) -> Greeting:
        return Greeting("hello")


def build() -> App:
    """An app that greets each name it reads."""
    app = App(Greetings())

    @app.subscriber("names")
    @app.publisher("greetings")
    async def greet(name: str, greeting: FromDishka[Greeting]) -> str:
        return f"{greeting.text} {name}"

    return app


@pytest.fixture
def lifespan_app() -> App:
    """The app the plugin's lifespan_client runs."""
    return build()


@pytest.fixture
def lifespan_overrides() -> list[object]:
    """A fake greeting for every test in this module."""
    return [override(Greeting, Greeting("hi"))]


async def test_lifespan_client_runs_the_app_with_the_overrides(lifespan_client: TestClient) -> None:
    """The plugin's lifespan_client is a running TestClient with this module's overrides."""
    await lifespan_client.publish("names", "Ada")
    assert lifespan_client.published("greetings") == ["hi Ada"]


def test_kafka_bootstrap_answers_the_kafka_protocol(kafka_bootstrap: str) -> None:
    """The session's Kafka broker answers an ApiVersions request on the bootstrap address."""
    host, port = kafka_bootstrap.rsplit(":", 1)
    request = struct.pack(">hhih", 18, 0, 7, 4) + b"test"
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(struct.pack(">i", len(request)) + request)
        size, correlation = struct.unpack(">ii", connection.recv(8))
    assert correlation == 7
    assert size > 4


async def test_kafka_bootstrap_serves_aiokafka(kafka_bootstrap: str) -> None:
    """Aiokafka produces to and reads back from the session broker (no group: no join wait)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        metadata = await producer.send_and_wait("plugin-check", b"ping", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition("plugin-check", 0)
        consumer.assign([partition])
        consumer.seek(partition, metadata.offset)
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.value == b"ping"
