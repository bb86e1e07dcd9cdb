"""FastAPI: one container serves HTTP routes and Kafka handlers in one process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from dishka.integrations.fastapi import DishkaRoute, FastapiProvider, FromDishka
from dishka.integrations.starlette import inject
from fastapi import APIRouter, FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from di_lifespan import (
    App,
    ConfigurationError,
    Provider,
    Publisher,
    Scope,
    StartupError,
    provide,
)
from di_lifespan.fastapi import setup_dishka
from di_lifespan.testing import TestClient, override


class Counter:
    """An APP resource both sides use: handlers count, routes read."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.changed = anyio.Event()

    def add(self, word: str) -> None:
        self.seen.append(word)
        self.changed.set()
        self.changed = anyio.Event()


class Trace:
    """What the REQUEST-scoped resource saw: one entry per scope it opened and closed."""

    def __init__(self) -> None:
        self.events: list[str] = []


class PerRequest:
    """A REQUEST-scoped resource: made for each HTTP request, finalized after it."""

    def __init__(self, path: str) -> None:
        self.path = path


def build(trace: Trace | None = None) -> tuple[App, FastAPI, list[int]]:
    """An app with one APP resource, a REQUEST one, a Kafka handler and three routes."""
    events = (trace or Trace()).events
    setups: list[int] = []

    class Resources(Provider):
        @provide(scope=Scope.APP)
        def counter(self) -> Iterator[Counter]:
            setups.append(1)
            yield Counter()

        @provide(scope=Scope.REQUEST)
        def per_request(self, request: Request) -> Iterator[PerRequest]:
            events.append(f"open {request.url.path}")
            error = yield PerRequest(request.url.path)
            events.append(f"close {request.url.path}: {type(error).__name__}")

    app = App(Resources(), FastapiProvider(), broker="memory://", graceful_timeout=1)

    @app.subscriber("words", group="count", retry=None)
    async def count(word: str, counter: FromDishka[Counter]) -> None:
        counter.add(word)

    router = APIRouter(route_class=DishkaRoute)

    @router.post("/words/{word}", status_code=202)
    async def send(word: str, publisher: FromDishka[Publisher]) -> dict[str, str]:
        await publisher.publish("words", word)
        return {"sent": word}

    @router.get("/words")
    async def seen(counter: FromDishka[Counter], scoped: FromDishka[PerRequest]) -> list[str]:
        assert scoped.path == "/words"
        return counter.seen

    @router.get("/fail")
    async def fail(scoped: FromDishka[PerRequest]) -> None:
        raise RuntimeError(scoped.path)

    api = FastAPI(lifespan=app.asgi_lifespan)
    api.include_router(router)
    setup_dishka(app, api)
    return app, api, setups


def http(api: Starlette) -> httpx.AsyncClient:
    """An HTTP client that calls the ASGI app in process (no lifespan of its own)."""
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://api")


async def wait_for(counter: Counter, count: int) -> None:
    """Return once the handler has counted ``count`` words."""
    with anyio.fail_after(5):
        while len(counter.seen) < count:
            await counter.changed.wait()


async def test_a_route_and_a_kafka_handler_share_one_app_resource() -> None:
    """Under the ASGI lifespan, a route publishes, the handler counts, a route reads the count."""
    app, api, setups = build()
    async with LifespanManager(api), http(api) as client:
        counter = await app.container.get(Counter)
        assert (await client.post("/words/hello")).json() == {"sent": "hello"}
        await app.publish("words", "from-kafka")
        await wait_for(counter, 2)
        response = await client.get("/words")
    assert response.status_code == 200
    assert sorted(response.json()) == ["from-kafka", "hello"]
    assert setups == [1]  # one container: the resource was set up once for both sides
    assert str(app.status) == "stopped"


async def test_the_asgi_lifespan_enters_and_exits_in_one_task() -> None:
    """Starlette runs startup and shutdown in the same task, as the app's lifespan requires."""
    app, api, _ = build()
    tasks: list[int] = []

    @asynccontextmanager
    async def recorded(asgi_app: FastAPI) -> AsyncIterator[None]:
        tasks.append(anyio.get_current_task().id)
        async with app.asgi_lifespan(asgi_app):
            yield
        tasks.append(anyio.get_current_task().id)

    api.router.lifespan_context = recorded
    async with LifespanManager(api):
        assert str(app.status) == "running"
    assert len(tasks) == 2
    assert tasks[0] == tasks[1]


async def test_each_http_request_gets_a_request_scope_that_sees_its_error() -> None:
    """A REQUEST resource is made per request and finalized after it, told of its exception."""
    trace = Trace()
    _, api, _ = build(trace)
    async with LifespanManager(api), http(api) as client:
        assert (await client.get("/words")).status_code == 200
        assert (await client.get("/fail")).status_code == 500
    assert trace.events == [
        "open /words",
        "close /words: NoneType",
        "open /fail",
        "close /fail: RuntimeError",
    ]


async def test_routes_are_served_from_a_test_clients_run_with_its_overrides() -> None:
    """Under TestClient the routes see the test's run, fakes included."""
    app, api, setups = build()
    fake = Counter()
    fake.seen.append("fake")
    async with TestClient(app, overrides=[override(Counter, fake)]) as kafka, http(api) as client:
        await client.post("/words/hi")
        await kafka.settle()
        assert (await client.get("/words")).json() == ["fake", "hi"]
    assert setups == []  # the real resource never started


async def test_a_request_while_the_app_is_not_running_gets_503() -> None:
    """Without a run, a route answers 503 naming the app's state instead of failing inside."""
    _, api, _ = build()
    async with http(api) as client:
        response = await client.get("/words")
    assert response.status_code == 503
    assert response.text == "the app is stopped, not serving"


async def test_a_failed_startup_fails_the_asgi_startup() -> None:
    """A resource that cannot start makes the ASGI server's startup fail with StartupError."""

    class Broken(Provider):
        @provide(scope=Scope.APP)
        def counter(self) -> Counter:
            raise RuntimeError("no counter today")

    app = App(Broken(), broker="memory://")
    api = FastAPI(lifespan=app.asgi_lifespan)
    setup_dishka(app, api)
    with pytest.raises(StartupError, match="no counter today"):
        async with LifespanManager(api):
            pass
    assert str(app.status) == "stopped"


def test_setup_dishka_refuses_what_is_not_an_app() -> None:
    """Passing something else than a di_lifespan App is one clear configuration error."""
    with pytest.raises(ConfigurationError, match="expected a di_lifespan App"):
        setup_dishka(object(), FastAPI())  # type: ignore[arg-type]  # the mistake under test


async def test_a_plain_starlette_app_is_served_the_same_way() -> None:
    """Starlette routes with dishka's starlette inject get the app's resources too."""
    app, _, setups = build()

    @inject
    async def seen(request: Request, counter: FromDishka[Counter]) -> JSONResponse:
        return JSONResponse(counter.seen)

    web = Starlette(routes=[Route("/seen", seen)], lifespan=app.asgi_lifespan)
    setup_dishka(app, web)
    async with LifespanManager(web), http(web) as client:
        await app.publish("words", "hi")
        await wait_for(await app.container.get(Counter), 1)
        assert (await client.get("/seen")).json() == ["hi"]
    assert setups == [1]
