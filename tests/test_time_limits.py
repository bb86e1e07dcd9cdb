"""Time limits are honest: a step that could not be interrupted and ran past its limit failed."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from di_lifespan import (
    App,
    MemoryBroker,
    Outcome,
    Provider,
    Scope,
    ShutdownError,
    ShutdownTimeoutError,
    StartupTimeoutError,
    provide,
)


class Model:
    """A resource whose setup or finalizer blocks the event loop."""


class Blocking(Provider):
    """A sync provider that sleeps (blocking) in its setup or its finalizer."""

    def __init__(self, setup: float = 0.0, finalizer: float = 0.0) -> None:
        super().__init__()
        self.setup = setup
        self.finalizer = finalizer

    @provide(scope=Scope.APP)
    def model(self) -> Iterator[Model]:
        time.sleep(self.setup)  # a blocking load: no checkpoint to cancel it at
        yield Model()
        time.sleep(self.finalizer)


async def test_a_blocking_sync_setup_past_its_limit_fails_the_start() -> None:
    """A sync provider that returns after startup_timeout fails with StartupTimeoutError."""
    app = App(Blocking(setup=0.1), startup_timeout=0.02)
    with pytest.raises(StartupTimeoutError, match="resource Model failed to start"):
        async with app:
            pytest.fail("the app must not start")
    report = app.startup_report
    assert report is not None
    assert report["Model"].outcome is Outcome.TIMED_OUT


async def test_a_setup_that_shields_itself_past_its_limit_fails_the_start() -> None:
    """A setup that shields itself from cancellation and returns late is still timed out."""

    class Shielded(Provider):
        @provide(scope=Scope.APP)
        async def model(self) -> AsyncIterator[Model]:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.1)
            yield Model()

    app = App(Shielded(), startup_timeout=0.02)
    with pytest.raises(StartupTimeoutError):
        async with app:
            pytest.fail("the app must not start")
    report = app.startup_report
    assert report is not None
    assert report["Model"].outcome is Outcome.TIMED_OUT


async def test_a_blocking_sync_hook_past_its_limit_fails_the_start() -> None:
    """A sync on_startup hook that blocks past startup_timeout fails the start, named."""
    app = App(startup_timeout=0.02)

    @app.on_startup
    def warm_up() -> None:
        time.sleep(0.1)

    with pytest.raises(StartupTimeoutError, match=r"on_startup hook .*warm_up failed to start"):
        async with app:
            pytest.fail("the app must not start")


async def test_a_blocking_sync_finalizer_past_its_limit_is_a_shutdown_timeout() -> None:
    """A sync finalizer that blocks past shutdown_timeout is reported as ShutdownTimeoutError."""
    with pytest.raises(ShutdownError) as caught:
        async with App(Blocking(finalizer=0.1), shutdown_timeout=0.02):
            pass
    (failure,) = caught.value.exceptions
    assert isinstance(failure, ShutdownTimeoutError)
    assert failure.step == "finalizer of Model"


async def test_a_sync_handler_past_the_graceful_timeout_is_abandoned_and_not_committed() -> None:
    """A sync handler still running at graceful_timeout is abandoned, reported, not committed."""
    broker = MemoryBroker()
    app = App(broker=broker, graceful_timeout=0.05)
    release = threading.Event()
    started = threading.Event()
    finished: list[str] = []

    @app.subscriber("jobs", group="workers")
    def work(body: bytes) -> None:
        started.set()
        release.wait(5)  # a blocking call no cancellation can interrupt
        finished.append(body.decode())

    try:
        with anyio.fail_after(3), pytest.raises(ShutdownError) as caught:  # noqa: PT012  # the whole run is under test
            async with app:
                await app.publish("jobs", b"job")
                await anyio.to_thread.run_sync(started.wait)
    finally:
        release.set()
    (failure,) = caught.value.exceptions
    assert isinstance(failure, ShutdownTimeoutError)
    assert failure.step == f"subscriber {work.__qualname__} (graceful_timeout)"
    assert broker.committed("workers", "jobs") == [0]
