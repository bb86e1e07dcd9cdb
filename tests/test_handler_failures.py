"""Nothing fails silently: stray cancellations are failures, and a test sees every handler error."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from di_lifespan import (
    DEAD_LETTER_HEADERS,
    App,
    ConfigurationError,
    MemoryBroker,
    Retry,
    ShutdownError,
)
from di_lifespan.testing import TestClient


async def cancelled_elsewhere() -> None:
    """Await a future that another party cancelled, as a handler might."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


async def test_a_handler_raising_cancelled_error_is_retried_then_dead_lettered() -> None:
    """CancelledError from a handler (not a stop) is a failure: retried, then dead-lettered."""
    broker = MemoryBroker()
    app = App(broker=broker)
    attempts: list[int] = []

    @app.subscriber("jobs", group="workers", retry=Retry(attempts=2, backoff=0))
    async def work(body: bytes) -> None:
        attempts.append(1)
        await cancelled_elsewhere()

    async with app:
        await app.publish("jobs", b"job")
        with anyio.fail_after(5):
            while not broker.messages("jobs.dlq"):
                await broker.wait_for_change()
    (dead,) = broker.messages("jobs.dlq")
    assert dead.header(DEAD_LETTER_HEADERS["attempts"]) == "2"
    assert "CancelledError" in (dead.header(DEAD_LETTER_HEADERS["error"]) or "")
    assert len(attempts) == 2
    assert broker.committed("workers", "jobs") == [1]


async def test_a_handler_raising_cancelled_error_fails_the_test() -> None:
    """In TestClient a handler's stray CancelledError is raised to the test, never green."""
    app = App()

    @app.subscriber("jobs")
    async def work(body: bytes) -> None:
        await cancelled_elsewhere()

    async with TestClient(app) as client:
        with pytest.raises(Exception, match="CancelledError"):
            await client.publish("jobs", b"job")


async def test_an_error_of_a_message_a_hook_published_is_raised_when_the_client_exits() -> None:
    """Errors of messages nobody awaited (a hook published them) are raised at the exit."""
    app = App()
    handled = anyio.Event()

    @app.subscriber("jobs")
    async def work(body: bytes) -> None:
        handled.set()
        raise ValueError(f"cannot handle {body.decode()}")

    @app.after_startup
    async def seed() -> None:
        await app.publish("jobs", b"seed")

    with pytest.raises(ValueError, match="cannot handle seed"):
        async with TestClient(app):
            await handled.wait()


async def test_several_handler_errors_are_raised_together_at_exit() -> None:
    """Two unawaited handler errors come out as one ExceptionGroup when the client exits."""
    app = App()

    @app.subscriber("jobs")
    async def work(body: bytes) -> None:
        raise ValueError(body.decode())

    with pytest.raises(ExceptionGroup) as caught:  # noqa: PT012  # the exit raises them
        async with TestClient(app) as client:
            await app.publish("jobs", b"one")
            await app.publish("jobs", b"two")
            with anyio.fail_after(5):
                while client.broker.pending():
                    await client.broker.wait_for_change()
    assert sorted(str(error) for error in caught.value.exceptions) == ["one", "two"]


async def test_settle_timeout_fires_when_handlers_publish_to_each_other_forever() -> None:
    """Handlers that ping-pong without ever awaiting still let settle_timeout fire."""
    app = App()

    @app.subscriber("ping")
    @app.publisher("pong")
    async def ping(body: bytes) -> bytes:
        return body

    @app.subscriber("pong")
    @app.publisher("ping")
    async def pong(body: bytes) -> bytes:
        return body

    with anyio.fail_after(5):
        async with TestClient(app, settle_timeout=0.1) as client:
            with pytest.raises(TimeoutError, match=r"still not handled after 0\.1 s"):
                await client.publish("ping", b"ball")


async def test_the_client_graceful_timeout_is_short_and_can_be_set() -> None:
    """TestClient stops a stuck handler after its own graceful_timeout, not the app's 30 s."""
    app = App()  # graceful_timeout 30 s by default
    entered = anyio.Event()

    @app.subscriber("jobs")
    async def stuck(body: bytes) -> None:
        entered.set()
        await anyio.sleep_forever()

    with anyio.fail_after(5), pytest.raises(ShutdownError) as caught:  # noqa: PT012  # the stop is under test
        async with TestClient(app, graceful_timeout=0.05) as client:
            await app.publish("jobs", b"job")
            await entered.wait()
            assert client.broker.pending() == 1
    (failure,) = caught.value.exceptions
    assert str(failure) == (
        f"subscriber {stuck.__qualname__} (graceful_timeout) failed: did not finish within 0.05 s"
    )


async def test_an_error_down_a_chain_of_handlers_is_raised_by_the_publish() -> None:
    """A handler fed by another handler's result fails: the first publish raises its error."""
    app = App()

    @app.subscriber("orders")
    @app.publisher("invoices")
    async def take(body: bytes) -> bytes:
        return body + b" invoiced"

    @app.subscriber("invoices")
    async def send(body: bytes) -> None:
        raise LookupError(f"no address for {body.decode()}")

    async with TestClient(app) as client:
        with pytest.raises(LookupError, match="no address for order 7 invoiced"):
            await client.publish("orders", b"order 7")


async def test_a_cancellation_during_the_exit_is_not_masked_by_a_handler_error() -> None:
    """A cancel arriving while the client stops propagates; a pending handler error waits."""
    app = App()
    failed = anyio.Event()
    outer = anyio.CancelScope()

    @app.subscriber("jobs")
    async def work(body: bytes) -> None:
        failed.set()
        raise ValueError("unawaited")

    @app.on_shutdown
    def cancel_the_test() -> None:
        outer.cancel()  # as a test timeout would, while the client is stopping

    with outer:
        async with TestClient(app) as client:
            await client.app.publish("jobs", b"job")
            await failed.wait()
    assert outer.cancelled_caught


async def test_a_handler_past_its_handler_timeout_is_cancelled_retried_then_dead_lettered() -> None:
    """handler_timeout cancels a hung attempt; it is retried, then dead-lettered; work goes on."""
    broker = MemoryBroker()
    app = App(broker=broker)
    attempts: list[str] = []
    handled: list[str] = []

    @app.subscriber(
        "jobs", group="workers", retry=Retry(attempts=2, backoff=0), handler_timeout=0.05
    )
    async def work(job: str) -> None:
        attempts.append(job)
        if job == "hang":
            await anyio.sleep_forever()
        handled.append(job)

    async with app:
        with anyio.fail_after(5):
            await app.publish("jobs", "hang")
            await app.publish("jobs", "next")
            while not (broker.messages("jobs.dlq") and handled):
                await broker.wait_for_change()
    (dead,) = broker.messages("jobs.dlq")
    assert dead.header("x-error-type") == "HandlerTimeoutError"
    assert "handler_timeout of 0.05 s" in (dead.header("x-error") or "")
    assert dead.header(DEAD_LETTER_HEADERS["attempts"]) == "2"
    assert attempts == ["hang", "hang", "next"]
    assert handled == ["next"]
    assert broker.committed("workers", "jobs") == [2]


async def test_a_handler_within_its_handler_timeout_is_untouched() -> None:
    """A handler that finishes within handler_timeout returns its result as usual."""
    app = App()

    @app.subscriber("prices", handler_timeout=1)
    @app.publisher("doubled")
    async def double(price: int) -> int:
        await anyio.sleep(0.01)
        return price * 2

    async with TestClient(app) as client:
        await client.publish("prices", 21)
        assert client.published("doubled") == [42]


@pytest.mark.parametrize("bad", [0, -1, float("inf"), "5", True])
def test_a_handler_timeout_that_is_not_a_positive_number_is_refused(bad: object) -> None:
    """handler_timeout must be a positive, finite number of seconds: the error names it."""
    app = App()
    with pytest.raises(ConfigurationError, match="handler_timeout"):
        app.subscriber("jobs", handler_timeout=bad)  # type: ignore[arg-type]  # wrong on purpose
