"""Eager startup: every APP resource created at entry, concurrently, once, in dependency order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from di_lifespan import (
    App,
    GraphError,
    Outcome,
    Provider,
    Scope,
    StartupError,
    StartupReport,
    StartupTimeoutError,
    from_context,
    provide,
)
from di_lifespan._brokers import BROKER_ENV
from di_lifespan._graph import ResourceGraph
from tests.resources import Cache, Database, Diamond, Journal, Service, Settings


async def test_diamond_creates_each_resource_once_in_dependency_order() -> None:
    """The shared root of a diamond is created once, first; the top is created last."""
    journal = Journal()
    async with App(Diamond(journal)):
        assert journal.setups() == ["Settings", "Cache", "Database", "Service"]
    assert journal.finalizers() == ["Service", "Database", "Cache", "Settings"]


async def test_resources_no_handler_uses_are_created_at_entry() -> None:
    """Startup creates every APP resource, not only the ones something asks for."""
    journal = Journal()
    app = App(Diamond(journal))
    async with app:
        assert journal.setups() == ["Settings", "Cache", "Database", "Service"]
        assert await app.container.get(Service) is await app.container.get(Service)
        assert len(journal.setups()) == 4


class Left:
    """Independent of Right."""


class Right:
    """Independent of Left."""


class Rendezvous(Provider):
    """Left and Right each wait inside their setup until the other has entered its own."""

    def __init__(self) -> None:
        super().__init__()
        self.left_in = anyio.Event()
        self.right_in = anyio.Event()

    @provide(scope=Scope.APP)
    async def left(self) -> Left:
        self.left_in.set()
        await self.right_in.wait()
        return Left()

    @provide(scope=Scope.APP)
    async def right(self) -> Right:
        self.right_in.set()
        await self.left_in.wait()
        return Right()


async def test_independent_resources_are_inside_their_setup_at_the_same_time() -> None:
    """Two independent resources start concurrently (serially each would wait forever)."""
    app = App(Rendezvous(), startup_timeout=5)
    async with app:
        assert isinstance(await app.container.get(Left), Left)
    report = app.startup_report
    assert report is not None
    assert report["Left"].outcome is Outcome.OK
    assert report["Right"].outcome is Outcome.OK


class Model:
    """Takes forever to load in these tests."""


class SlowModel(Provider):
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
        self.journal("model loading")
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.journal("model cancelled")
            raise
        yield Model()  # pragma: no cover - never reached


async def test_a_resource_over_its_time_limit_fails_the_start_naming_it() -> None:
    """A resource that outlives its limit is cancelled; StartupError names it and the limit."""
    journal = Journal()
    app = App(SlowModel(journal), startup_timeouts={Model: 0.05})
    with pytest.raises(StartupTimeoutError) as caught:
        await app.__aenter__()
    assert caught.value.what == "resource Model"
    assert caught.value.timeout == 0.05
    assert str(caught.value) == "resource Model failed to start: did not finish within 0.05 s"
    assert journal.events == ["+Settings", "model loading", "model cancelled", "-Settings"]
    report = app.startup_report
    assert report is not None
    assert report["Model"].outcome is Outcome.TIMED_OUT
    assert report["Settings"].outcome is Outcome.OK


class Predictor:
    """Needs the model."""


class Broken(Provider):
    """Settings and Cache start; Model fails after Cache is ready; Predictor needs Model."""

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal
        self.cache_ready = anyio.Event()
        self.other_started = anyio.Event()

    @provide(scope=Scope.APP)
    def settings(self) -> Iterator[Settings]:
        self.journal("+Settings")
        yield Settings()
        self.journal("-Settings")

    @provide(scope=Scope.APP)
    async def cache(self, settings: Settings) -> AsyncIterator[Cache]:
        self.journal("+Cache")
        self.cache_ready.set()
        yield Cache()
        self.journal("-Cache")

    @provide(scope=Scope.APP)
    async def database(self) -> AsyncIterator[Database]:
        self.other_started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.journal("Database cancelled")
            raise
        yield Database()  # pragma: no cover - never reached

    @provide(scope=Scope.APP)
    async def model(self, settings: Settings) -> Model:
        await self.cache_ready.wait()
        await self.other_started.wait()
        raise FileNotFoundError("model.bin")

    @provide(scope=Scope.APP)
    def predictor(self, model: Model) -> Predictor:
        return Predictor()  # pragma: no cover - never reached


async def test_a_failing_resource_rolls_back_what_was_created_in_reverse() -> None:
    """A failure cancels in-flight setups and finalizes exactly the created ones, reversed."""
    journal = Journal()
    app = App(Broken(journal))
    with pytest.raises(StartupError) as caught:
        await app.__aenter__()
    error = caught.value
    assert error.what == "resource Model"
    assert error.path == ("Predictor", "Model")
    assert isinstance(error.__cause__, FileNotFoundError)
    assert str(error) == (
        "resource Model failed to start: FileNotFoundError: model.bin "
        "(dependency path: Predictor -> Model)"
    )
    assert journal.events == ["+Settings", "+Cache", "Database cancelled", "-Cache", "-Settings"]
    report = app.startup_report
    assert report is not None
    outcomes = {entry.name: entry.outcome for entry in report.resources}
    assert outcomes == {
        "Settings": Outcome.OK,
        "Cache": Outcome.OK,
        "Database": Outcome.CANCELLED,
        "Model": Outcome.FAILED,
        "Predictor": Outcome.NOT_STARTED,
    }


async def test_no_task_is_left_running_after_a_failed_start() -> None:
    """After a failed start, the only task left is the test's own."""
    before = len(_running_tasks())
    with pytest.raises(StartupError):
        await App(Broken(Journal())).__aenter__()
    assert len(_running_tasks()) == before


def _running_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks()


class Orphan:
    """Needs a type nobody provides."""


class Missing:
    """Provided by nobody."""


class MissingDependency(Provider):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    @provide(scope=Scope.APP)
    def settings(self) -> Settings:
        self.journal("+Settings")  # pragma: no cover - the graph check comes first
        return Settings()  # pragma: no cover

    @provide(scope=Scope.APP)
    def orphan(self, missing: Missing) -> Orphan:
        return Orphan()  # pragma: no cover - the graph check comes first


async def test_a_graph_error_raises_before_any_setup_with_dishkas_explanation() -> None:
    """A missing provider fails the start before anything is created; dishka's text is kept."""
    journal = Journal()
    with pytest.raises(GraphError) as caught:
        await App(MissingDependency(journal)).__aenter__()
    assert "Missing" in str(caught.value)
    assert "Orphan" in str(caught.value)
    assert caught.value.__cause__ is not None
    assert journal.events == []


class Cyclic(Provider):
    @provide(scope=Scope.APP)
    def left(self, right: Right) -> Left:
        return Left()  # pragma: no cover - the graph check comes first

    @provide(scope=Scope.APP)
    def right(self, left: Left) -> Right:
        return Right()  # pragma: no cover - the graph check comes first


async def test_a_cycle_is_a_graph_error() -> None:
    """A dependency cycle is reported as a GraphError naming the types."""
    with pytest.raises(GraphError, match="Left"):
        await App(Cyclic()).__aenter__()


class PerMessage:
    """REQUEST-scoped."""


class ScopeMismatch(Provider):
    @provide(scope=Scope.REQUEST)
    def per_message(self) -> PerMessage:
        return PerMessage()  # pragma: no cover - the graph check comes first

    @provide(scope=Scope.APP)
    def model(self, per_message: PerMessage) -> Model:
        return Model()  # pragma: no cover - the graph check comes first


async def test_an_app_resource_needing_a_request_one_is_a_graph_error() -> None:
    """A scope mismatch is caught by dishka's validation and reported as a GraphError."""
    with pytest.raises(GraphError, match="PerMessage"):
        await App(ScopeMismatch()).__aenter__()


class Client:
    """A context-manager class: the provider enters it and exits it."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def __aenter__(self) -> Client:
        self.journal("+Client")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.journal("-Client")


class Pool:
    """A synchronous context manager."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def __enter__(self) -> Pool:
        self.journal("+Pool")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.journal("-Pool")


class Version:
    """Made by a plain sync factory."""


class Token:
    """Made by a plain async factory."""


class EveryKind(Provider):
    """Sync and async generators, plain factories, values and context-manager classes."""

    journal_source = from_context(provides=Journal, scope=Scope.APP)
    version = provide(Version, scope=Scope.APP)

    @provide(scope=Scope.APP)
    async def token(self) -> Token:
        return Token()

    @provide(scope=Scope.APP)
    async def client(self, journal: Journal) -> AsyncIterator[Client]:
        async with Client(journal) as client:
            yield client

    @provide(scope=Scope.APP)
    def pool(self, journal: Journal, client: Client) -> Iterator[Pool]:
        with Pool(journal) as pool:
            yield pool


async def test_every_kind_of_provider_is_created_and_finalized() -> None:
    """Sync/async generators, factories and context-manager classes all start and stop."""
    journal = Journal()
    app = App(EveryKind(), context={Journal: journal})
    async with app:
        assert isinstance(await app.container.get(Version), Version)
        assert isinstance(await app.container.get(Token), Token)
        report = app.startup_report
        assert report is not None
        assert {entry.name for entry in report.resources} == {"Version", "Token", "Client", "Pool"}
    assert journal.events == ["+Client", "+Pool", "-Pool", "-Client"]


class Alias:
    """An alias of Settings."""


async def test_dishka_features_keep_their_meaning_under_eager_startup() -> None:
    """Aliases, decorators and components are created once and resolve as dishka says."""
    from dishka import alias, decorate

    created: list[str] = []

    class Features(Provider):
        settings_alias = alias(source=Settings, provides=Alias)

        @provide(scope=Scope.APP)
        def settings(self) -> Settings:
            created.append("Settings")
            return Settings()

        @decorate
        def wrap(self, settings: Settings) -> Settings:
            created.append("decorated")
            return settings

        @provide(scope=Scope.APP)
        def service(self, settings: Alias) -> Service:
            created.append("Service")
            return Service()

    app = App(Features())
    async with app:
        aliased: object = await app.container.get(Alias)
        assert aliased is await app.container.get(Settings)
        assert created == ["Settings", "decorated", "Service"]
    report = app.startup_report
    assert report is not None
    assert [entry.name for entry in report.resources] == ["Settings", "Service"]


async def test_startup_report_lists_every_resource_with_offset_and_duration() -> None:
    """The report has one row per resource, each with a start offset, a duration and ok."""
    app = App(Diamond(Journal()))
    async with app:
        pass
    report = app.startup_report
    assert report is not None
    assert report.ok
    assert [entry.name for entry in report.resources] == [
        "Settings",
        "Database",
        "Cache",
        "Service",
    ]
    for entry in report.resources:
        assert entry.offset is not None
        assert entry.duration is not None
        assert entry.duration >= 0
    table = str(report).splitlines()
    assert table[0].split() == ["resource", "start", "took", "outcome"]
    names_by_start = [line.split()[0] for line in table[1:]]
    assert names_by_start[0] == "Settings"
    assert names_by_start[-1] == "Service"


async def test_startup_report_is_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """A successful start logs the report as one INFO record."""
    caplog.set_level("INFO", logger="di_lifespan")
    async with App(Diamond(Journal())):
        pass
    records = [r for r in caplog.records if r.getMessage().startswith("startup report")]
    assert len(records) == 1
    assert "Service" in records[0].getMessage()


def test_graph_reads_only_long_lived_cached_factories() -> None:
    """The graph's nodes are the APP resources, REQUEST factories and context values excluded."""
    from dishka import make_async_container

    class Mixed(Provider):
        settings = from_context(provides=Settings, scope=Scope.APP)

        @provide(scope=Scope.APP)
        def database(self, settings: Settings) -> Database:
            return Database()  # pragma: no cover - never resolved

        @provide(scope=Scope.REQUEST)
        def per_message(self, database: Database) -> PerMessage:
            return PerMessage()  # pragma: no cover - never resolved

    graph = ResourceGraph(make_async_container(Mixed(), context={Settings: Settings()}))
    assert [node.name for node in graph.nodes.values()] == ["Database"]


class Backend:
    """Chosen by a marker: a fake in development, the real one otherwise."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


async def test_only_the_active_when_variant_is_created() -> None:
    """With dishka's when= variants, eager startup creates the chosen variant, not the others."""
    from dishka import Marker, activate

    class Development(Marker):
        """Active when the settings say so."""

    created: list[str] = []

    class Backends(Provider):
        @provide(scope=Scope.APP)
        def settings(self) -> Settings:
            return Settings()

        @provide(scope=Scope.APP)
        def real(self) -> Iterator[Backend]:
            created.append("real")
            yield Backend("real")

        @provide(scope=Scope.APP, when=Development("on"))
        def fake(self) -> Iterator[Backend]:
            created.append("fake")
            yield Backend("fake")

        @activate(Development("on"))
        def development(self, settings: Settings) -> bool:
            created.append("marker")
            return True

    app = App(Backends())
    async with app:
        assert (await app.container.get(Backend)).kind == "fake"
    assert created == ["marker", "fake"]
    report = app.startup_report
    assert report is not None
    assert [entry.name for entry in report.resources] == ["Settings", "Backend"]


class Clock:
    """A RUNTIME-scoped resource: outlives the APP scope."""


async def test_runtime_scoped_resources_start_eagerly_and_close_last() -> None:
    """A RUNTIME resource is created at startup and finalized after the APP ones."""
    journal = Journal()

    class Mixed(Provider):
        @provide(scope=Scope.RUNTIME)
        def clock(self) -> Iterator[Clock]:
            journal("+Clock")
            yield Clock()
            journal("-Clock")

        @provide(scope=Scope.APP)
        def settings(self, clock: Clock) -> Iterator[Settings]:
            journal("+Settings")
            yield Settings()
            journal("-Settings")

    async with App(Mixed()):
        assert journal.events == ["+Clock", "+Settings"]
    assert journal.events[2:] == ["-Settings", "-Clock"]


class Plugin:
    """One of several implementations gathered with dishka's collect()."""

    def __init__(self, name: str) -> None:
        self.name = name


async def test_a_collection_creates_every_item_once_at_startup() -> None:
    """A collect() of dishka gathers every Plugin; each is created once, at startup."""
    from dishka import collect

    created: list[str] = []

    class Plugins(Provider):
        plugins = collect(Plugin, scope=Scope.APP)

        @provide(scope=Scope.APP)
        def first(self) -> Plugin:
            created.append("first")
            return Plugin("first")

        @provide(scope=Scope.APP)
        def second(self) -> Plugin:
            created.append("second")
            return Plugin("second")

    app = App(Plugins())
    async with app:
        assert sorted(created) == ["first", "second"]
        plugins = await app.container.get(list[Plugin])
        assert sorted(plugin.name for plugin in plugins) == ["first", "second"]
    assert sorted(created) == ["first", "second"]


async def test_the_startup_report_names_the_broker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The default memory:// broker is in the report's field and says so in the summary line."""
    monkeypatch.delenv(BROKER_ENV, raising=False)
    caplog.set_level("INFO", logger="di_lifespan")
    app = App(Diamond(Journal()))
    async with app:
        pass
    report = app.startup_report
    assert report is not None
    assert report.broker == "memory://"
    assert report.summary().endswith(
        "resources ready in " + f"{report.duration:.3f}s, broker memory:// (in this process"
        " only: nothing reaches Kafka)"
    )
    assert "broker memory://" in caplog.text


def test_a_password_in_the_broker_url_is_masked_in_the_report() -> None:
    """A broker URL's password never reaches the report or its log line."""
    report = StartupReport()
    report.broker = "kafka://svc:pa55word@kafka-1:9092"
    assert report.broker == "kafka://svc:***@kafka-1:9092"
    assert "pa55word" not in report.summary()
