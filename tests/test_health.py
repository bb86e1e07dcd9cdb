"""The health port: /live while the lifespan runs, /ready only while the app can take work."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import anyio
import pytest

from di_lifespan import App, ConfigurationError, MemoryBroker, StartupError
from di_lifespan.kafka import EmbeddedKafka, KafkaBroker
from di_lifespan.testing import TestClient
from tests.http_probe import get, parse, send_raw, wait_for_address, wait_for_status
from tests.tcp_proxy import KafkaProxy

LOCAL = "127.0.0.1"


class SwitchableBroker(MemoryBroker):
    """A memory broker whose reachability the test switches, as a broker outage would."""

    def __init__(self) -> None:
        super().__init__()
        self.up = True

    async def reachable(self) -> bool:
        """Whether the test says the broker answers."""
        return self.up


def probed_app(**options: object) -> App:
    """An app with one subscriber, serving its probes on a free local port."""
    app = App(health_port=0, health_host=LOCAL, **options)  # type: ignore[arg-type]  # test options

    @app.subscriber("orders", group="g")
    async def handle(order: int) -> None:
        del order

    return app


@pytest.fixture
async def running() -> AsyncIterator[App]:
    """A probed app, started."""
    app = probed_app()
    async with app:
        yield app


async def test_ready_only_once_the_after_startup_hooks_have_finished() -> None:
    """While an after_startup hook waits, /live is 200 and /ready 503; then /ready is 200."""
    app = probed_app()
    hook_entered, hook_may_end = anyio.Event(), anyio.Event()

    @app.after_startup
    async def warm_up() -> None:
        hook_entered.set()
        await hook_may_end.wait()

    async with anyio.create_task_group() as tasks:
        ready = anyio.Event()

        async def run() -> None:
            async with app:
                ready.set()
                await anyio.sleep_forever()

        tasks.start_soon(run)
        await wait_for_address(app)
        await hook_entered.wait()
        assert (await get(app, "/live")).status == 200
        not_ready = await get(app, "/ready")
        assert not_ready.status == 503
        assert "not serving" in not_ready.body
        hook_may_end.set()
        await ready.wait()
        answer = await get(app, "/ready")
        assert (answer.status, answer.body) == (200, "ready\n")
        tasks.cancel_scope.cancel()


async def test_not_ready_once_shutdown_begins() -> None:
    """While an on_shutdown hook waits, /ready is 503 and /live still 200; then it closes."""
    app = probed_app()
    hook_entered, hook_may_end = anyio.Event(), anyio.Event()

    @app.on_shutdown
    async def drain() -> None:
        hook_entered.set()
        await hook_may_end.wait()

    async with anyio.create_task_group() as tasks:
        leave = anyio.Event()

        async def run() -> None:
            async with app:
                await leave.wait()

        tasks.start_soon(run)
        address = await wait_for_address(app)
        await wait_for_status(app, "/ready", 200)
        leave.set()
        await hook_entered.wait()
        assert (await get(app, "/ready")).status == 503
        assert (await get(app, "/live")).status == 200
        hook_may_end.set()
    assert app.health_address is None
    with pytest.raises(OSError, match=r"refused|connect"):
        await send_raw(address, b"GET /live HTTP/1.0\r\n\r\n")


async def test_not_ready_while_the_broker_is_unreachable() -> None:
    """/ready is 503 while the transport says its broker does not answer, 200 once it does."""
    broker = SwitchableBroker()
    app = probed_app(broker=broker)
    async with app:
        await wait_for_status(app, "/ready", 200)
        broker.up = False
        answer = await wait_for_status(app, "/ready", 503)
        assert "the broker is unreachable" in answer.body
        assert (await get(app, "/live")).status == 200
        broker.up = True
        await wait_for_status(app, "/ready", 200)


async def test_kafka_broker_cut_off_makes_the_app_not_ready_until_it_is_back() -> None:
    """On Kafka, /ready is 503 while the app's connections to the broker are cut, then 200."""
    async with anyio.create_task_group() as tasks:
        relay = KafkaProxy("127.0.0.1:0")  # its port is known once it listens
        await relay.serve(tasks)
        async with EmbeddedKafka(advertised_address=relay.address) as kafka:
            relay.upstream = kafka.bootstrap_servers
            broker = KafkaBroker(relay.address, idempotent=False)
            app = App(broker=broker, health_port=0, health_host=LOCAL)
            async with app:
                await wait_for_status(app, "/ready", 200)
                relay.cut()
                answer = await wait_for_status(app, "/ready", 503)
                assert "the broker is unreachable" in answer.body
                assert not await broker.reachable()
                relay.restore()
                await wait_for_status(app, "/ready", 200)
        tasks.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nowhere HTTP/1.0\r\n\r\n", 404),
        (b"POST /ready HTTP/1.0\r\nContent-Length: 0\r\n\r\n", 405),
        (b"nonsense\r\n\r\n", 400),
        (b"GET /live HTTP/1.0\r\nX-Pad: " + b"a" * 10_000 + b"\r\n\r\n", 431),
        (b"GET /live?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ],
)
async def test_requests_other_than_a_get_of_a_probe_get_an_http_error(
    running: App, request_bytes: bytes, status: int
) -> None:
    """Unknown paths 404, other methods 405, garbage 400, an oversized head 431."""
    address = running.health_address
    assert address is not None
    answer = parse(await send_raw(address, request_bytes))
    assert answer.status == status
    assert answer.headers["connection"] == "close"
    assert int(answer.headers["content-length"]) == len(answer.body.encode())
    if status == 405:
        assert answer.headers["allow"] == "GET"


async def test_a_client_that_says_nothing_does_not_stop_the_probes(running: App) -> None:
    """Connections that send nothing, or hang up, leave the server answering the others."""
    address = running.health_address
    assert address is not None
    async with await anyio.connect_tcp(*address):  # silent, held open
        hung_up = await anyio.connect_tcp(*address)
        await hung_up.aclose()
        assert (await get(running, "/live")).status == 200


async def test_a_port_in_use_fails_the_startup_naming_the_health_server() -> None:
    """A health port another process holds is a StartupError naming the health server."""
    with socket.socket() as taken:
        taken.bind((LOCAL, 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = App(health_port=port, health_host=LOCAL)
        with pytest.raises(StartupError, match=f"health server \\(port {port}\\)"):
            async with app:
                pass


@pytest.mark.parametrize("port", [-1, 70_000, "8080", True])
def test_health_port_must_be_a_tcp_port(port: object) -> None:
    """health_port is a whole number 0-65535 (0: a free port), or None."""
    with pytest.raises(ConfigurationError, match="TCP port"):
        App(health_port=port)  # type: ignore[arg-type]  # the wrong types are the point


async def test_lifespan_health_port_serves_an_app_without_one() -> None:
    """app.lifespan(health_port=0) serves the probes for that run only."""
    app = App(health_host=LOCAL)
    async with app.lifespan(health_port=0):
        assert (await get(app, "/ready")).status == 200
    assert app.health_address is None
    async with app:
        assert app.health_address is None


async def test_the_test_client_serves_the_probes_on_a_free_port_not_the_apps() -> None:
    """TestClient never binds the app's own health port: tests run beside a deployed app."""
    with socket.socket() as taken:
        taken.bind((LOCAL, 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = App(health_port=port, health_host=LOCAL)
        async with TestClient(app):
            address = app.health_address
            assert address is not None
            assert address[1] != port
            assert (await get(app, "/ready")).status == 200
