"""The di_lifespan pytest plugin, registered through the ``pytest11`` entry point.

Fixtures:

- ``kafka_bootstrap`` (session): a Kafka bootstrap address — ``DI_LIFESPAN_TEST_KAFKA`` when
  set (an external Kafka), else an embedded broker started once for the whole session.
- ``lifespan_client``: a running ``TestClient`` for the app your ``lifespan_app`` fixture
  returns, with the providers your ``lifespan_overrides`` fixture returns (none by default).

``lifespan_client`` is an async fixture: run async tests with anyio's pytest plugin
(``anyio_mode = "auto"``, or ``@pytest.mark.anyio`` on each test) or with pytest-asyncio in
auto mode (``asyncio_mode = "auto"``), not both. A test that requests it under any other setup
fails at once, saying what to set.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    request: pytest.FixtureRequest,
    lifespan_app: App,
    lifespan_overrides: Sequence[BaseProvider | Override],
) -> AsyncIterator[TestClient]:
    """The app's whole lifespan on an in-memory broker, for one test."""
    client = TestClient(lifespan_app, overrides=lifespan_overrides)
    if "anyio_backend" in request.fixturenames:
        # anyio's plugin runs a fixture's setup and teardown in one task of its own.
        async with client:
            yield client
    else:
        async with _hosted(client):
            yield client


@contextlib.asynccontextmanager
async def _hosted(client: TestClient) -> AsyncIterator[None]:
    """Start and stop ``client`` in one task of its own, for the time of the block.

    pytest-asyncio runs an async fixture's setup and its teardown in two different tasks,
    while a running app's task group must be left by the task that entered it. The host task
    is awaited before the block exits, so it never outlives the fixture.
    """
    started = asyncio.Event()
    stop = asyncio.Event()

    async def host() -> None:
        try:
            async with client:
                started.set()
                await stop.wait()
        finally:
            started.set()  # a failed start wakes the fixture too

    task = asyncio.get_running_loop().create_task(host(), name="di_lifespan lifespan_client")
    await started.wait()
    if task.done():
        await task  # raises the StartupError
    try:
        yield
    finally:
        stop.set()
        await task  # raises a ShutdownError


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test that asks for lifespan_client when no async plugin would run it rightly."""
    if "lifespan_client" not in getattr(item, "fixturenames", ()):
        return
    by_anyio = "anyio_backend" in getattr(item, "fixturenames", ())
    by_asyncio = _asyncio_auto_mode(item.config)
    if by_anyio != by_asyncio:
        return
    problem = (
        "both anyio's plugin and pytest-asyncio's auto mode would run it, each in an event loop"
        " of its own"
        if by_anyio
        else "neither anyio's pytest plugin nor pytest-asyncio in auto mode runs this test"
    )
    pytest.fail(
        f"lifespan_client is an async fixture, and {problem}. Pick one: set anyio_mode ="
        ' "auto" in your pytest configuration (or mark the test @pytest.mark.anyio), or'
        ' install pytest-asyncio and set asyncio_mode = "auto".',
        pytrace=False,
    )


def _asyncio_auto_mode(config: pytest.Config) -> bool:
    """Whether pytest-asyncio is active and runs every async test and fixture (auto mode)."""
    if not config.pluginmanager.has_plugin("asyncio"):
        return False
    mode = config.getoption("asyncio_mode", None) or config.getini("asyncio_mode")
    return str(mode) == "auto"
