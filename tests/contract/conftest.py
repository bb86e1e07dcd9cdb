"""The brokers every transport contract test runs against."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from di_lifespan import Broker, MemoryBroker


@pytest.fixture(params=["memory"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    """Which transport a contract test runs on."""
    return str(request.param)


@pytest.fixture
async def broker(transport_kind: str) -> AsyncIterator[Broker]:
    """A started broker of that kind, with two partitions per new topic."""
    transport: Broker = MemoryBroker(partitions=2)
    await transport.start()
    yield transport
    await transport.stop()


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses, so that tests can share one real broker."""
    return f"contract-{uuid.uuid4().hex[:12]}"
