"""Regressions a line-by-line review found: finalizers that never ran, errors that escaped raw."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from di_lifespan import (
    App,
    MemoryBroker,
    Provider,
    Scope,
    ShutdownError,
    StartupError,
    StartupTimeoutError,
    Subscription,
    provide,
)
from di_lifespan._broker import Assignment
from di_lifespan._memory import _MemoryConsumer


class Model:
    """A resource loaded in a worker thread: its setup cannot be interrupted."""


class Broken:
    """A resource whose setup fails."""


def loading(events: list[str], seconds: float) -> Provider:
    """A provider whose setup sleeps in a thread, then records its finalizer's two halves."""

    class Loading(Provider):
        @provide(scope=Scope.APP)
        async def model(self) -> AsyncIterator[Model]:
            await anyio.to_thread.run_sync(time.sleep, seconds)
            events.append("set up")
            yield Model()
            events.append("finalizer begins")
            await anyio.lowlevel.checkpoint()  # an await in the finalizer, as closing a pool has
            events.append("finalizer ends")

    return Loading()


async def test_a_setup_finishing_after_the_caller_was_cancelled_is_still_finalized() -> None:
    """Cancelled during startup, the app waits for an uninterruptible setup and finalizes it."""
    events: list[str] = []
    with anyio.move_on_after(0.05) as scope:
        async with App(loading(events, 0.2)):
            pytest.fail("the app must not start")
    assert scope.cancelled_caught
    assert events == ["set up", "finalizer begins", "finalizer ends"]


async def test_a_rollback_runs_the_whole_finalizer_of_a_setup_that_completed_late() -> None:
    """A failed start finalizes, fully, a resource whose uninterruptible setup completed."""
    events: list[str] = []

    class Failing(Provider):
        @provide(scope=Scope.APP)
        async def broken(self) -> Broken:
            await anyio.sleep(0.01)
            raise RuntimeError("broken")

    with pytest.raises(StartupError, match="resource Broken failed to start"):
        async with App(Failing(), loading(events, 0.1)):
            pytest.fail("the app must not start")
    assert events == ["set up", "finalizer begins", "finalizer ends"]


class Consumers(MemoryBroker):
    """A memory broker whose subscribe to topic "slow" hangs, and whose closes are recorded."""

    def __init__(self, *, fail_close: bool = False) -> None:
        super().__init__()
        self.closed: list[str] = []
        self.fail_close = fail_close

    async def subscribe(
        self, subscription: Subscription, assignment: Assignment
    ) -> _MemoryConsumer:
        if "slow" in subscription.topics:
            await anyio.sleep(10)
        consumer = await super().subscribe(subscription, assignment)
        closed, fail = self.closed, self.fail_close
        close = consumer.close

        async def recorded_close() -> None:
            await close()
            closed.append(subscription.topics[0])
            if fail:
                raise ConnectionError("LeaveGroup failed: broker gone")

        consumer.close = recorded_close  # type: ignore[method-assign]  # a test double
        return consumer


async def test_a_subscribe_past_startup_timeout_is_named_and_the_others_are_closed() -> None:
    """A hanging subscribe fails the start with StartupTimeoutError; joined consumers close."""
    broker = Consumers()
    app = App(broker=broker, startup_timeout=0.2)

    @app.subscriber("fast", group="g")
    async def fast(body: bytes) -> None: ...

    @app.subscriber("slow", group="g")
    async def slow(body: bytes) -> None: ...

    with pytest.raises(StartupTimeoutError, match=r"subscriber .*slow \(slow\) failed to start"):
        async with app:
            pytest.fail("the app must not start")
    assert broker.closed == ["fast"]


async def test_a_consumer_that_fails_to_close_is_one_named_shutdown_failure() -> None:
    """A failing LeaveGroup at the end of a run is a ShutdownError step, not a raw group."""
    app = App(broker=Consumers(fail_close=True))

    @app.subscriber("jobs", group="g")
    async def handle(body: bytes) -> None: ...

    with pytest.raises(ShutdownError) as caught:
        async with app:
            pass
    (failure,) = caught.value.exceptions
    assert str(failure) == (
        f"subscriber {handle.__qualname__} failed: leaving its consumer group failed:"
        " ConnectionError: LeaveGroup failed: broker gone"
    )
