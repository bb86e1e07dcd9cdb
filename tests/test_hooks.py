"""Hooks and the user's lifespan context manager run in the documented order."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from di_lifespan import (
    App,
    ConfigurationError,
    DependencyError,
    FromDishka,
    LifespanStateError,
    Provider,
    Scope,
    ShutdownError,
    ShutdownStepError,
    StartupError,
    StartupTimeoutError,
    provide,
)
from tests.resources import Journal, Settings


class Model:
    """Logs its setup and finalizer."""


class Resources(Provider):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    @provide(scope=Scope.APP)
    async def settings(self) -> AsyncIterator[Settings]:
        self.journal("+Settings")
        yield Settings()
        self.journal("-Settings")

    @provide(scope=Scope.APP)
    async def model(self, settings: Settings) -> AsyncIterator[Model]:
        self.journal("+Model")
        yield Model()
        self.journal("-Model")


class PerMessage:
    """REQUEST-scoped: not available to hooks."""


def build_app(journal: Journal) -> App:
    """Build an app with two hooks of each kind and a user lifespan, all journalled."""

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        journal("lifespan enter")
        try:
            yield
        finally:  # runs on errors too: the exception that ended the lifespan is raised here
            journal("lifespan exit")

    app = App(Resources(journal), lifespan=lifespan)

    @app.on_startup
    def on_startup_1() -> None:
        journal("on_startup 1")

    @app.on_startup
    async def on_startup_2() -> None:
        journal("on_startup 2")

    @app.after_startup
    async def after_startup_1(model: FromDishka[Model]) -> None:
        journal(f"after_startup 1 {type(model).__name__}")

    @app.after_startup
    def after_startup_2() -> None:
        journal("after_startup 2")

    @app.on_shutdown
    async def on_shutdown_1(model: FromDishka[Model]) -> None:
        journal(f"on_shutdown 1 {type(model).__name__}")

    @app.on_shutdown
    def on_shutdown_2() -> None:
        journal("on_shutdown 2")

    @app.after_shutdown
    def after_shutdown_1() -> None:
        journal("after_shutdown 1")

    @app.after_shutdown
    async def after_shutdown_2() -> None:
        journal("after_shutdown 2")

    return app


async def test_hooks_run_in_the_documented_order() -> None:
    """Startup hooks in registration order, shutdown hooks reversed, around the resources."""
    journal = Journal()
    async with build_app(journal):
        journal("running")
    assert journal.events == [
        "lifespan enter",
        "on_startup 1",
        "on_startup 2",
        "+Settings",
        "+Model",
        "after_startup 1 Model",
        "after_startup 2",
        "running",
        "on_shutdown 2",
        "on_shutdown 1 Model",
        "after_shutdown 2",
        "after_shutdown 1",
        "lifespan exit",
        "-Model",
        "-Settings",
    ]


async def test_an_on_startup_hook_gets_the_resources_it_asks_for_first() -> None:
    """An on_startup hook's FromDishka parameter is created (with its dependencies) for it."""
    journal = Journal()
    app = App(Resources(journal))

    @app.on_startup
    async def warm_up(model: FromDishka[Model]) -> None:
        journal(f"warm_up {type(model).__name__}")

    async with app:
        pass
    assert journal.events[:3] == ["+Settings", "+Model", "warm_up Model"]


async def test_a_failing_startup_hook_rolls_back_and_names_the_hook() -> None:
    """An after_startup hook that raises fails the start; resources are finalized."""
    journal = Journal()
    app = build_app(journal)

    @app.after_startup
    def check_model() -> None:
        raise RuntimeError("model answers nonsense")

    with pytest.raises(StartupError) as caught:
        await app.__aenter__()
    assert caught.value.what.startswith("after_startup hook ")
    assert caught.value.what.endswith("check_model")
    assert str(caught.value).endswith("failed to start: RuntimeError: model answers nonsense")
    assert "on_shutdown 1 Model" not in journal.events  # the app never became ready
    assert journal.events[-3:] == ["lifespan exit", "-Model", "-Settings"]


async def test_a_slow_startup_hook_is_cut_at_the_startup_timeout() -> None:
    """A startup hook that outlives startup_timeout fails the start naming the hook."""
    app = App(startup_timeout=0.05)

    @app.on_startup
    async def stuck() -> None:
        await anyio.sleep_forever()

    with pytest.raises(StartupTimeoutError, match=r"stuck failed to start: did not finish"):
        await app.__aenter__()


async def test_a_failing_shutdown_hook_does_not_stop_the_rest() -> None:
    """An on_shutdown hook that raises is reported; the remaining shutdown steps all run."""
    journal = Journal()
    app = build_app(journal)

    @app.on_shutdown
    def flush() -> None:
        raise OSError("disk full")

    with pytest.raises(ShutdownError) as caught:
        async with app:
            pass
    (failure,) = caught.value.exceptions
    assert isinstance(failure, ShutdownStepError)
    assert failure.step.endswith("flush")
    assert journal.events[-3:] == ["lifespan exit", "-Model", "-Settings"]


async def test_a_hook_asking_for_a_request_scoped_type_fails_before_setup() -> None:
    """A hook parameter nobody provides at APP scope fails the start naming hook and parameter."""
    journal = Journal()

    class WithRequest(Resources):
        @provide(scope=Scope.REQUEST)
        def per_message(self) -> PerMessage:
            return PerMessage()  # pragma: no cover - never resolved

    app = App(WithRequest(journal))

    @app.after_startup
    def use(item: FromDishka[PerMessage]) -> None:
        """Never runs."""

    with pytest.raises(DependencyError) as caught:
        await app.__aenter__()
    assert caught.value.parameter == "item"
    assert "PerMessage" in str(caught.value)
    assert "use" in caught.value.what
    assert journal.events == []


def test_a_hook_parameter_that_is_not_injected_is_refused_at_registration() -> None:
    """A hook parameter without FromDishka and without default is a ConfigurationError."""
    app = App()
    with pytest.raises(ConfigurationError, match=r"parameter 'env' is not FromDishka"):

        @app.on_startup
        def setup(env: str) -> None:
            """Never runs."""


async def test_a_failing_user_lifespan_is_a_startup_error() -> None:
    """A user lifespan that raises on entry fails the start naming it."""

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        read_config()
        yield  # pragma: no cover - never reached

    def read_config() -> None:
        raise ValueError("no config")

    with pytest.raises(StartupError, match="the lifespan context manager failed to start"):
        await App(lifespan=lifespan).__aenter__()


class Warmer:
    """A hook that is an object: its async __call__ gets resources injected."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def __call__(self, model: FromDishka[Model]) -> None:
        self.journal(f"warm {type(model).__name__}")


def note(journal: Journal, event: str, model: FromDishka[Model]) -> None:
    """A hook function whose first two arguments a partial binds."""
    journal(f"{event} {type(model).__name__}")


async def test_partials_and_callable_objects_are_hooks() -> None:
    """functools.partial and objects with an async __call__ run as hooks, with injection."""
    journal = Journal()
    app = App(Resources(journal))
    app.after_startup(Warmer(journal))
    app.on_shutdown(functools.partial(note, journal, "stop"))
    async with app:
        pass
    assert [event for event in journal.events if event[0] not in "+-"] == [
        "warm Model",
        "stop Model",
    ]


async def test_a_hook_registered_on_a_running_app_is_refused() -> None:
    """A hook added while the app runs would not run in this run: LifespanStateError."""
    app = App()
    async with app:
        with pytest.raises(LifespanStateError) as caught:

            @app.on_shutdown
            def late() -> None:
                """Never registered."""

    assert str(caught.value).startswith("cannot register on_shutdown hook ")
    assert str(caught.value).endswith("late: the app is running")


async def test_a_bare_async_generator_is_a_lifespan() -> None:
    """As in starlette, an async generator function is accepted as lifespan= as it is."""
    journal = Journal()

    async def lifespan(app: App) -> AsyncIterator[None]:
        journal("enter")
        app.state.ready = True
        yield
        journal("exit")

    app = App(lifespan=lifespan)
    async with app:
        journal(f"running, ready={app.state.ready}")
    assert journal.events == ["enter", "running, ready=True", "exit"]


async def test_a_lifespan_that_returns_no_context_manager_fails_the_start_naming_it() -> None:
    """A lifespan function returning something else is a ConfigurationError at start."""

    def lifespan(app: App) -> object:
        return object()

    app = App(lifespan=lifespan)  # type: ignore[arg-type]  # what the test is about
    with pytest.raises(ConfigurationError, match=r"lifespan\(app\) returned object, not an async"):
        await app.__aenter__()
