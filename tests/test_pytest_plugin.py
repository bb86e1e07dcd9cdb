"""The pytest plugin's fixtures: a client per test from your app, one Kafka broker per session."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from di_lifespan import App, FromDishka, Provider, Scope, provide
from di_lifespan.testing import TestClient, override
from tests.resources import run_pytest


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


async def test_this_suite_runs_coroutine_tests_through_anyio_on_asyncio(
    request: pytest.FixtureRequest,
) -> None:
    """The conftest marks each coroutine test for anyio, whose plugin runs it on asyncio."""
    assert request.node.get_closest_marker("anyio") is not None
    assert request.getfixturevalue("anyio_backend") == "asyncio"
    assert asyncio.current_task() is not None  # inside a running asyncio task


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


# --- lifespan_client under each async plugin setup (pytester projects) --------------------

SERVICE = """
from collections.abc import Iterator

from di_lifespan import App, FromDishka, Provider, Scope, provide


class Greeting:
    def __init__(self, text: str) -> None:
        self.text = text


class Greetings(Provider):
    def __init__(self, setup: str = "ok", finalizer: str = "ok") -> None:
        super().__init__()
        self.setup = setup
        self.finalizer = finalizer

    @provide(scope=Scope.APP)
    def greeting(self) -> Iterator[Greeting]:
        if self.setup != "ok":
            raise OSError(self.setup)
        yield Greeting("hello")
        if self.finalizer != "ok":
            raise ConnectionError(self.finalizer)


def build(**failures: str) -> App:
    app = App(Greetings(**failures))

    @app.subscriber("names")
    @app.publisher("greetings")
    async def greet(name: str, greeting: FromDishka[Greeting]) -> str:
        return f"{greeting.text} {name}"

    return app
"""

CLIENT_TEST = """
import pytest

import service


@pytest.fixture
def lifespan_app():
    return service.build({failures})


{mark}
async def test_greets(lifespan_client):
    await lifespan_client.publish("names", "Ada")
    assert lifespan_client.published("greetings") == ["hello Ada"]
"""


@pytest.fixture
def client_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A project whose tests use lifespan_client: one plain, one marked anyio, two broken apps."""
    pytester.makepyfile(
        service=SERVICE,
        test_plain=CLIENT_TEST.format(failures="", mark=""),
        test_marked=CLIENT_TEST.format(failures="", mark="@pytest.mark.anyio"),
        test_broken_start=CLIENT_TEST.format(failures="setup='no weights'", mark=""),
        test_broken_stop=CLIENT_TEST.format(failures="finalizer='pool gone'", mark=""),
    )
    return pytester


def test_lifespan_client_under_anyio_auto_mode(
    client_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With anyio_mode=auto (no pytest-asyncio), plain and marked tests run; failures surface."""
    result = run_pytest(client_project, monkeypatch, "-p", "no:asyncio", "-o", "anyio_mode=auto")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_greets*",
            "*StartupError: resource Greeting failed to start: OSError: no weights*",
            "*ERROR at teardown of test_greets*",
            "*ShutdownError: the app stopped with errors: finalizer of Greeting failed:"
            " ConnectionError: pool gone*",
        ]
    )


def test_lifespan_client_under_pytest_asyncio_auto_mode(
    client_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under pytest-asyncio's auto mode (setup and teardown in two tasks) the client works.

    The failures of a broken app come out at setup and teardown as under anyio; a test also
    marked for anyio is refused, since both plugins would run it.
    """
    result = run_pytest(
        client_project,
        monkeypatch,
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
    )
    result.assert_outcomes(passed=2, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*StartupError: resource Greeting failed to start: OSError: no weights*",
            "*ShutdownError: the app stopped with errors: finalizer of Greeting failed:"
            " ConnectionError: pool gone*",
            "*lifespan_client is an async fixture, and both anyio's plugin and pytest-asyncio's"
            " auto mode would run it*",
        ]
    )


def test_lifespan_client_without_an_async_setup_says_what_to_set(
    client_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With neither auto mode (pytest-asyncio strict), only the anyio-marked test runs.

    Each other test fails at setup with one message naming the settings to choose from.
    """
    result = run_pytest(client_project, monkeypatch)
    result.assert_outcomes(passed=1, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*lifespan_client is an async fixture, and neither anyio's pytest plugin nor"
            ' pytest-asyncio in auto mode runs this test. Pick one: set anyio_mode = "auto" in'
            " your pytest configuration (or mark the test @pytest.mark.anyio), or install"
            ' pytest-asyncio and set asyncio_mode = "auto".',
        ]
    )
