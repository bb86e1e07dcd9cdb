"""Task ownership: whatever user code enters, the same task exits, and cancellations propagate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from dishka import AsyncContainer

from di_lifespan import (
    App,
    Provider,
    Scope,
    ShutdownError,
    StartupTimeoutError,
    provide,
)
from tests.resources import Journal


async def test_a_lifespan_holding_a_task_group_runs_a_poller_and_stops_cleanly() -> None:
    """A FastAPI-style lifespan= with a background poller in a task group starts and stops."""
    journal = Journal()
    polled = anyio.Event()

    async def poll() -> None:
        while True:
            polled.set()
            await anyio.sleep(0.001)

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group:
            group.start_soon(poll)
            journal("+poller")
            yield
            group.cancel_scope.cancel()
            journal("-poller")

    async with App(lifespan=lifespan):
        await polled.wait()
    assert journal.events == ["+poller", "-poller"]


async def test_a_lifespan_holding_a_cancel_scope_sees_the_exception_that_ended_the_app() -> None:
    """A lifespan= holding a cancel scope across its yield exits in order, given the error."""
    seen: list[BaseException | None] = []

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        with anyio.CancelScope():
            try:
                yield
            except RuntimeError as error:
                seen.append(error)
                raise

    with pytest.raises(RuntimeError, match="body failed"):
        async with App(lifespan=lifespan):
            raise RuntimeError("body failed")
    assert [str(error) for error in seen] == ["body failed"]


async def test_a_lifespan_whose_entry_hangs_fails_the_start_within_startup_timeout() -> None:
    """A lifespan= that never reaches its yield is cancelled at startup_timeout and named."""

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        async with anyio.create_task_group():
            await anyio.sleep_forever()
            yield

    with anyio.fail_after(5), pytest.raises(StartupTimeoutError) as caught:
        async with App(lifespan=lifespan, startup_timeout=0.05):
            pytest.fail("the app must not start")
    assert str(caught.value) == (
        "the lifespan context manager failed to start: did not finish within 0.05 s"
    )


class Client:
    """A client with a heartbeat task that lives as long as it does."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.beats = 0


class Other(Client):
    """A second client, to show two such resources start concurrently."""


@asynccontextmanager
async def heartbeat(client: Client) -> AsyncIterator[None]:
    """Beat in a task of a task group that stays open until the block ends."""

    async def beat() -> None:
        while True:
            client.beats += 1
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as group:
        group.start_soon(beat)
        yield
        group.cancel_scope.cancel()


class Heartbeats(Provider):
    """Two resources, each holding a task group across its yield, that wait for each other."""

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal
        self.started = [anyio.Event(), anyio.Event()]

    async def _meet(self, index: int) -> None:
        self.started[index].set()
        await self.started[1 - index].wait()  # only concurrent setups get past this

    @provide(scope=Scope.APP)
    async def first(self) -> AsyncIterator[Client]:
        client = Client("Client")
        async with heartbeat(client):
            await self._meet(0)
            self.journal("+Client")
            yield client
        self.journal("-Client")

    @provide(scope=Scope.APP)
    async def second(self) -> AsyncIterator[Other]:
        other = Other("Other")
        async with heartbeat(other):
            await self._meet(1)
            self.journal("+Other")
            yield other
        self.journal("-Other")


async def test_generators_holding_task_groups_start_concurrently_and_stop_in_reverse() -> None:
    """Resources with a heartbeat task group start concurrently; finalizers run in reverse."""
    journal = Journal()
    app = App(Heartbeats(journal), startup_timeout=5)
    async with app:
        client = await app.container.get(Client)
        beats = client.beats
        await anyio.sleep(0.01)
        assert client.beats > beats  # its heartbeat runs while the app serves
    created = journal.setups()
    assert sorted(created) == ["Client", "Other"]
    assert journal.finalizers() == list(reversed(created))


async def test_cancelling_the_caller_runs_the_shutdown_and_the_cancellation_propagates() -> None:
    """A cancelled `async with app` body still finalizes everything; the cancel is not swallowed."""
    journal = Journal()

    class Slow(Provider):
        @provide(scope=Scope.APP)
        async def client(self) -> AsyncIterator[Client]:
            yield Client("Slow")
            await anyio.sleep(0.02)  # a finalizer that awaits, under a cancelled caller
            journal("-Slow")

    with anyio.CancelScope() as outer:
        async with App(Slow()):
            outer.cancel()
            await anyio.sleep(5)
        pytest.fail("the cancellation must propagate out of the app")
    assert outer.cancelled_caught
    assert journal.events == ["-Slow"]


async def test_force_stop_returns_at_once_and_cuts_a_hanging_finalizer_short() -> None:
    """force_stop() never blocks; a finalizer that hangs is cancelled and reported."""

    class Hangs(Provider):
        @provide(scope=Scope.APP)
        async def client(self) -> AsyncIterator[Client]:
            yield Client("Hangs")
            await anyio.sleep_forever()

    app = App(Hangs(), shutdown_timeout=60)

    @app.on_shutdown
    async def force_soon() -> None:
        async def force() -> None:
            await anyio.sleep(0.02)
            app.force_stop()

        # A hook cannot hold a task group across the rest of the shutdown: start a watcher task.
        watcher.start_soon(force)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as watcher:
            with pytest.raises(ShutdownError) as caught:
                async with app:
                    pass
    (failure,) = caught.value.exceptions
    assert str(failure) == "finalizer of Client failed: was cancelled by a forced stop"


async def test_a_resource_fetched_through_the_container_in_a_setup_is_created_once() -> None:
    """A provider that gets another resource through an injected AsyncContainer shares it."""
    created: list[str] = []

    class Dynamic(Provider):
        @provide(scope=Scope.APP)
        async def slow(self) -> AsyncIterator[Other]:
            created.append("Other")
            await anyio.sleep(0.02)  # still being created when the other setup asks for it
            yield Other("Other")

        @provide(scope=Scope.APP)
        async def client(self, container: AsyncContainer) -> Client:
            other = await container.get(Other)
            return Client(f"uses {other.name}")

    app = App(Dynamic(), startup_timeout=5)
    async with app:
        assert (await app.container.get(Client)).name == "uses Other"
    assert created == ["Other"]


async def test_a_failing_task_of_the_lifespan_stops_the_app_naming_the_error() -> None:
    """A lifespan= whose task group loses a task stops the app; the exit names that error."""

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        async def poller() -> None:
            await anyio.sleep(0.01)
            raise RuntimeError("poller died")

        async with anyio.create_task_group() as group:
            group.start_soon(poller)
            yield
            group.cancel_scope.cancel()

    with anyio.fail_after(5), pytest.raises(ShutdownError) as caught:  # the whole run is under test
        async with App(lifespan=lifespan):
            await anyio.sleep_forever()  # the failure ends the block
    (failure,) = caught.value.exceptions
    assert str(failure) == "the lifespan context manager failed: RuntimeError: poller died"


async def test_a_failing_task_of_a_resource_stops_the_app_naming_the_error() -> None:
    """A provider whose heartbeat task fails stops the app; its finalizer reports the error."""

    class Failing(Provider):
        @provide(scope=Scope.APP)
        async def client(self) -> AsyncIterator[Client]:
            async def beat() -> None:
                await anyio.sleep(0.01)
                raise RuntimeError("heartbeat died")

            async with anyio.create_task_group() as group:
                group.start_soon(beat)
                yield Client("Failing")
                group.cancel_scope.cancel()

    with anyio.fail_after(5), pytest.raises(ShutdownError) as caught:  # the whole run is under test
        async with App(Failing()):
            await anyio.sleep_forever()  # the failure ends the block
    (failure,) = caught.value.exceptions
    assert str(failure) == "finalizer of Client failed: RuntimeError: heartbeat died"
