"""Delivery begins only once the app is ready, and stops gracefully, whatever stops it."""

from __future__ import annotations

import anyio
import pytest

from di_lifespan import (
    App,
    DeliveryError,
    MemoryBroker,
    Retry,
    ShutdownError,
    ShutdownStepError,
    StartupError,
)
from tests.resources import Refusing


async def test_a_failing_smoke_test_leaves_every_message_unhandled_and_uncommitted() -> None:
    """No message reaches a handler, or is committed, before every after_startup hook passed."""
    broker = MemoryBroker()
    await broker.send("jobs", b"waiting since yesterday")
    app = App(broker=broker)
    handled: list[bytes] = []

    @app.subscriber("jobs", group="workers")
    async def work(body: bytes) -> None:
        handled.append(body)

    @app.after_startup
    async def smoke_test() -> None:
        await anyio.sleep(0.02)  # time enough for a subscriber that did not wait
        raise RuntimeError("the model predicts nonsense")

    with pytest.raises(StartupError, match="smoke_test failed to start"):
        async with app:
            pytest.fail("the app must not start")
    assert handled == []
    assert broker.committed("workers", "jobs") == [0]


async def test_messages_published_by_after_startup_hooks_are_handled_once_ready() -> None:
    """An after_startup hook may publish; its message is handled after the hooks passed."""
    app = App(broker=MemoryBroker())
    events: list[str] = []
    handled = anyio.Event()

    @app.subscriber("jobs", group="workers")
    async def work(body: bytes) -> None:
        events.append(f"handled {body.decode()}")
        handled.set()

    @app.after_startup
    async def warm_up() -> None:
        await app.publish("jobs", b"probe")
        await anyio.sleep(0.02)
        events.append("hooks passed")

    async with app:
        await handled.wait()
    assert events == ["hooks passed", "handled probe"]


async def test_one_crashing_subscriber_stops_the_app_and_the_others_commit() -> None:
    """A crash stops the app gracefully: the other subscriber's message in hand is committed."""
    memory = MemoryBroker()
    broker = Refusing(memory, {"poison.dlq"})  # a failed message cannot be put aside
    app = App(broker=broker)
    slow_started = anyio.Event()

    @app.subscriber("slow", group="workers")
    async def slow(body: bytes) -> None:
        slow_started.set()
        await anyio.sleep(0.05)  # still in hand when the other subscriber crashes

    @app.subscriber("poison", group="workers", retry=None)
    async def poisoned(body: bytes) -> None:
        raise RuntimeError("bad input")

    with anyio.fail_after(5), pytest.raises(ShutdownError) as caught:  # noqa: PT012  # the whole run is under test
        async with app:
            await app.publish("slow", b"long job")
            await slow_started.wait()
            await app.publish("poison", b"bad")
            await anyio.sleep_forever()  # the crash ends the block
    (failure,) = caught.value.exceptions
    assert isinstance(failure, ShutdownStepError)
    assert failure.step == f"subscriber {poisoned.__qualname__}"
    crash = failure.__cause__
    assert isinstance(crash, DeliveryError)
    assert (crash.subscriber, crash.topic, crash.partition, crash.offset) == (
        poisoned.__qualname__,
        "poison",
        0,
        0,
    )
    assert memory.committed("workers", "slow") == [1]
    assert memory.committed("workers", "poison") == [0]


async def test_stopping_during_a_retry_pause_is_prompt_and_commits_nothing() -> None:
    """A stop cuts a retry's backoff short; the message is neither committed nor dead-lettered."""
    broker = MemoryBroker()
    app = App(broker=broker)
    attempts: list[int] = []
    failed_once = anyio.Event()

    @app.subscriber("jobs", group="workers", retry=Retry(attempts=5, backoff=30))
    async def work(body: bytes) -> None:
        attempts.append(len(attempts) + 1)
        failed_once.set()
        raise RuntimeError("flaky")

    with anyio.move_on_after(2) as patience:  # not the 10 s pause
        async with app:
            await app.publish("jobs", b"job")
            await failed_once.wait()
    assert not patience.cancel_called
    assert attempts == [1]
    assert broker.committed("workers", "jobs") == [0]
    assert broker.messages("jobs.dlq") == []


async def test_a_cancelled_caller_lets_the_message_in_hand_finish_and_commit() -> None:
    """Cancelling the task that runs the app stops it gracefully: the handler finishes."""
    broker = MemoryBroker()
    app = App(broker=broker, graceful_timeout=5)
    events: list[str] = []
    started = anyio.Event()

    @app.subscriber("jobs", group="workers")
    async def work(body: bytes) -> None:
        events.append("start")
        started.set()
        await anyio.sleep(0.05)
        events.append("done")

    with anyio.CancelScope() as outer:
        async with app:
            await app.publish("jobs", b"job")
            await started.wait()
            outer.cancel()
            await anyio.sleep_forever()
    assert outer.cancelled_caught
    assert events == ["start", "done"]
    assert broker.committed("workers", "jobs") == [1]


@pytest.mark.parametrize("max_concurrency", [1, 2])
async def test_a_handler_calling_sys_exit_stops_the_app_naming_the_subscriber(
    max_concurrency: int,
) -> None:
    """SystemExit out of a handler stops the app gracefully, as one named failure."""
    app = App(broker=MemoryBroker())

    @app.subscriber("jobs", group="workers", max_concurrency=max_concurrency)
    async def work(body: bytes) -> None:
        raise SystemExit("a library gave up")

    with anyio.fail_after(5), pytest.raises(ShutdownError) as caught:  # noqa: PT012  # the whole run is under test
        async with app:
            await app.publish("jobs", b"job")
            await anyio.sleep_forever()  # the failure ends the block
    (failure,) = caught.value.exceptions
    assert str(failure) == f"subscriber {work.__qualname__} failed: SystemExit: a library gave up"
