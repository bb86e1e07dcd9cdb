"""The brokers every transport contract test runs against."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from di_lifespan import Broker, MemoryBroker

PARTITIONS = 3


@pytest.fixture(params=["memory"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    """Which transport a contract test runs on."""
    return str(request.param)


@pytest.fixture
def unstarted_broker(transport_kind: str) -> Broker:
    """A broker of that kind, not started (an App starts and stops it), three partitions a topic."""
    return MemoryBroker(partitions=PARTITIONS)


@pytest.fixture
async def broker(unstarted_broker: Broker) -> AsyncIterator[Broker]:
    """A started broker of that kind."""
    await unstarted_broker.start()
    yield unstarted_broker
    await unstarted_broker.stop()


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses, so that tests can share one real broker."""
    return f"contract-{uuid.uuid4().hex[:12]}"
