"""The brokers every transport contract test runs against: in memory, and on Kafka.

The Kafka runs share the session's broker (``kafka_bootstrap``: an embedded Tansu broker, or
the Kafka at ``DI_LIFESPAN_TEST_KAFKA``); each test makes topics of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from di_lifespan import Broker, MemoryBroker
from di_lifespan.kafka import KafkaBroker

PARTITIONS = 3


@pytest.fixture(params=["memory", "kafka"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    """Which transport a contract test runs on."""
    return str(request.param)


@pytest.fixture
def unstarted_broker(transport_kind: str, request: pytest.FixtureRequest) -> Broker:
    """A broker of that kind, not started (an App starts and stops it), three partitions a topic."""
    if transport_kind == "memory":
        return MemoryBroker(partitions=PARTITIONS)
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    # Idempotence off: the embedded broker cannot serve it, and the suite needs none.
    return KafkaBroker(bootstrap, idempotent=False, session_timeout_ms=2_000)


@pytest.fixture
async def broker(unstarted_broker: Broker) -> AsyncIterator[Broker]:
    """A started broker of that kind."""
    await unstarted_broker.start()
    yield unstarted_broker
    await unstarted_broker.stop()


@pytest.fixture
async def topic(transport_kind: str, request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses, so that tests can share one real broker.

    On Kafka it is created with three partitions, as the memory broker gives each topic, and so
    are the topics the tests derive from it (results, side messages, dead letters): created
    on first use instead, Tansu now and then held produce requests to them for half a minute.
    """
    name = f"contract-{uuid.uuid4().hex[:12]}"
    if transport_kind == "kafka":
        admin = AIOKafkaAdminClient(bootstrap_servers=request.getfixturevalue("kafka_bootstrap"))
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(f"{name}{suffix}", PARTITIONS, replication_factor=1)
                    for suffix in ("", ".out", ".side", ".dlq")
                ]
            )
        finally:
            await admin.close()
    return name
