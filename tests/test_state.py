"""The lifespan is a state machine: one run at a time, and a stopped app starts again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from di_lifespan import (
    App,
    AppStatus,
    ConfigurationError,
    LifespanStateError,
    Provider,
    Publisher,
    Scope,
    StartupError,
    from_context,
)
from tests.resources import Database, Diamond, Journal, Service


class Credentials(BaseModel):
    dsn: str


def sync_generator(app: App) -> Iterator[None]:
    """A lifespan written as a sync generator: refused with a hint."""
    yield  # pragma: no cover - never run


async def async_function(app: App) -> None:
    """A lifespan that is a plain async function: refused with a hint."""


@asynccontextmanager
async def made_manager(app: App | None) -> AsyncIterator[None]:
    """A lifespan factory; a call of it (the manager) is what users pass by mistake."""
    yield  # pragma: no cover - never run


async def test_a_stopped_app_starts_again_with_fresh_resources() -> None:
    """The same app object runs twice; each run creates and finalizes its own resources."""
    journal = Journal()
    app = App(Diamond(journal))
    async with app:
        first = await app.container.get(Service)
    # The Diamond's "Cache first" event is already set, so the second run is not ordered by it.
    async with app:
        second = await app.container.get(Service)
    assert first is not second
    assert journal.setups().count("Service") == 2
    assert journal.finalizers().count("Settings") == 2
    assert app.status is AppStatus.STOPPED


async def test_entering_a_running_app_fails() -> None:
    """Entering an app that is already running is a LifespanStateError; the app keeps running."""
    app = App(Diamond(Journal()))
    async with app:
        with pytest.raises(LifespanStateError) as caught:
            await app.__aenter__()
        assert str(caught.value) == "cannot start the app: the app is running already"
        assert app.status is AppStatus.RUNNING
        assert isinstance(await app.container.get(Service), Service)


async def test_the_container_exists_only_while_the_app_runs() -> None:
    """app.container outside a run is a LifespanStateError naming the state."""
    app = App(Diamond(Journal()))
    with pytest.raises(LifespanStateError, match="the app is stopped"):
        _ = app.container
    async with app:
        assert app.status is AppStatus.RUNNING
        assert app.container is app.container
    with pytest.raises(LifespanStateError):
        _ = app.container


async def test_an_app_whose_start_failed_can_start_again() -> None:
    """After a failed start the app is stopped and can be started again."""
    journal = Journal()
    attempts: list[int] = []
    app = App(Diamond(journal))

    @app.on_startup
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("not yet")

    with pytest.raises(StartupError):
        await app.__aenter__()
    assert app.status is AppStatus.STOPPED
    async with app:
        assert isinstance(await app.container.get(Service), Service)
    assert attempts == [1, 1]


async def test_serve_runs_until_cancelled() -> None:
    """serve() starts the app, keeps it running until cancelled, then stops it."""
    journal = Journal()
    app = App(Diamond(journal))
    ready = anyio.Event()
    app.after_startup(ready.set)
    async with anyio.create_task_group() as group:
        group.start_soon(app.serve)
        await ready.wait()
        assert app.status is AppStatus.RUNNING
        group.cancel_scope.cancel()
    assert app.status is AppStatus.STOPPED
    assert journal.finalizers() == ["Service", "Database", "Cache", "Settings"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"startup_timeout": 0},
            "App(startup_timeout=...): expected a positive number of seconds, got 0",
        ),
        (
            {"shutdown_timeout": "5"},
            "App(shutdown_timeout=...): expected a number of seconds, got '5'",
        ),
        ({"startup_timeouts": {Service: -1}}, "expected a positive number of seconds, got -1"),
        ({"lifespan": 3}, "App(lifespan=...): expected a callable, got 3"),
        (
            {"settings": dict},
            "App(settings=...): expected a pydantic BaseModel or BaseSettings class",
        ),
        (
            {"env_file": ".env"},
            "App(env_file=...): an env file is read into a settings class, and there is none",
        ),
        (
            {"settings": Credentials(dsn="s3cret")},
            "App(settings=...): got an instance of Credentials; pass the class itself",
        ),
        (
            {"context": {"db": Database()}},
            "App(context=...): key 'db' is a name, but values are injected by type, not by"
            " name (unlike Propan's context): write context={Database: ...}",
        ),
        ({"context": {3: 4}}, "App(context=...): key 3 is not a type"),
        (
            {"context": {Publisher: None}},
            "App(context=...): Publisher is provided by the app itself",
        ),
        (
            {"context": {Service: Service()}, "providers": [Diamond(Journal())]},
            "App(context=...): Service is also given by provider Diamond",
        ),
        (
            {"context": {Credentials: Credentials(dsn="x")}, "settings": Credentials},
            "App(context=...): Credentials is also given by settings=",
        ),
        ({"lifespan": sync_generator}, "sync_generator is a sync generator function"),
        ({"lifespan": async_function}, "async_function is an async function, not a context"),
        ({"lifespan": made_manager(None)}, "got a context manager; pass the function that"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(
    arguments: dict[str, object], message: str
) -> None:
    """Each bad App argument raises ConfigurationError naming the argument and the value."""
    providers: Any = arguments.pop("providers", [])
    with pytest.raises(ConfigurationError) as caught:
        App(*providers, **arguments)  # type: ignore[arg-type]  # wrong on purpose
    assert message in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_provider_that_is_not_a_dishka_provider_is_refused() -> None:
    """A positional argument that is not a dishka provider is named by its position."""
    with pytest.raises(ConfigurationError, match=r"App\(\) argument 2: expected a dishka Provider"):
        App(Diamond(Journal()), object())  # type: ignore[arg-type]


async def test_startup_timeouts_naming_an_unknown_resource_fail_the_start() -> None:
    """A per-resource limit for a type that is not an APP resource of the app is an error."""
    app = App(Diamond(Journal()), startup_timeouts={int: 5})
    with pytest.raises(ConfigurationError, match="names int, which is not an APP resource"):
        await app.__aenter__()
    assert app.status is AppStatus.STOPPED


async def test_app_state_is_a_namespace_of_each_app_and_status_is_the_lifespan() -> None:
    """app.state holds a user's attributes, one namespace per app; app.status the lifespan."""

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        app.state.model = "loaded"  # the FastAPI habit
        yield
        del app.state.model

    first, second = App(lifespan=lifespan), App()
    statuses = [first.status]
    async with first:
        statuses.append(first.status)
        assert first.state.model == "loaded"
        assert not hasattr(second.state, "model")
    statuses.append(first.status)
    assert statuses == [AppStatus.STOPPED, AppStatus.RUNNING, AppStatus.STOPPED]
    assert statuses[-1] == "stopped"  # a StrEnum
    assert vars(first.state) == {}


async def test_a_context_value_declared_with_from_context_is_no_clash() -> None:
    """A provider's from_context(provides=T) is what context={T: value} fills: accepted."""

    class Declared(Provider):
        database = from_context(provides=Database, scope=Scope.APP)

    database = Database()
    app = App(Declared(), context={Database: database})
    async with app:
        assert await app.container.get(Database) is database
