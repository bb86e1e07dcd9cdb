"""The di_lifespan pytest plugin, registered through the ``pytest11`` entry point.

Fixtures:

- ``kafka_bootstrap`` (session): a Kafka bootstrap address — ``DI_LIFESPAN_TEST_KAFKA`` when
  set (an external Kafka), else an embedded broker started once for the whole session.
- ``lifespan_client``: a running ``TestClient`` for the app your ``lifespan_app`` fixture
  returns, with the providers your ``lifespan_overrides`` fixture returns (none by default).

Async tests run through anyio's pytest plugin (``@pytest.mark.anyio``).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from dishka.provider import BaseProvider

from ._app import App
from ._embedded import EmbeddedKafka
from ._testing import Override, TestClient

__all__ = ["KAFKA_ENV", "kafka_bootstrap", "lifespan_app", "lifespan_client", "lifespan_overrides"]

KAFKA_ENV = "DI_LIFESPAN_TEST_KAFKA"
_HOST_PORT = re.compile(r"^[\w.\-\[\]:]+:\d{1,5}(,[\w.\-\[\]:]+:\d{1,5})*$")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A Kafka bootstrap address shared by the session's tests."""
    external = os.environ.get(KAFKA_ENV, "").strip()
    if external:
        if not _HOST_PORT.match(external):
            raise pytest.UsageError(f"{KAFKA_ENV}={external!r}: expected host:port[,host:port...]")
        yield external
        return
    with EmbeddedKafka() as kafka:
        yield kafka.bootstrap_servers


@pytest.fixture
def lifespan_app() -> App:
    """The app under test: override this fixture to return yours."""
    raise pytest.UsageError(
        "the lifespan_client fixture needs a `lifespan_app` fixture that returns your App"
    )


@pytest.fixture
def lifespan_overrides() -> Sequence[BaseProvider | Override]:
    """Providers (or override(Type, value)) replacing the app's: override this fixture."""
    return []


@pytest.fixture
async def lifespan_client(
    lifespan_app: App,
    lifespan_overrides: Sequence[BaseProvider | Override],
) -> AsyncIterator[TestClient]:
    """The app's whole lifespan on an in-memory broker, for one test."""
    async with TestClient(lifespan_app, overrides=lifespan_overrides) as client:
        yield client
