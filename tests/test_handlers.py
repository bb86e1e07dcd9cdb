"""Handlers: the body decoded, dependencies injected, the return value published."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from di_lifespan import (
    App,
    ConfigurationError,
    DependencyError,
    FromDishka,
    LifespanStateError,
    MemoryBroker,
    Message,
    Outgoing,
    Provider,
    Publisher,
    Retry,
    Router,
    Scope,
    StartupError,
    provide,
)
from tests.drain import drained
from tests.resources import ROOT, Journal, app_on_memory


class Order(BaseModel):
    item: str
    quantity: int


class Receipt(BaseModel):
    item: str
    total: float


class Prices:
    """APP-scoped: the price list."""

    def __init__(self) -> None:
        self.table = {"apple": 0.5, "pear": 0.75}


class Tax:
    """APP-scoped: a second APP dependency."""

    rate = 0.1


class Trace:
    """REQUEST-scoped: made for one message from that message."""

    def __init__(self, message: Message) -> None:
        self.coordinates = message.coordinates


class Shop(Provider):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    prices = provide(Prices, scope=Scope.APP)
    tax = provide(Tax, scope=Scope.APP)

    @provide(scope=Scope.REQUEST)
    def trace(self, message: Message) -> Iterator[Trace]:
        self.journal(f"+Trace {message.offset}")
        yield Trace(message)
        self.journal(f"-Trace {message.offset}")


def shop_app(journal: Journal) -> tuple[App, MemoryBroker]:
    return app_on_memory(Shop(journal))


async def test_app_dependencies_are_resolved_once_and_the_result_is_published() -> None:
    """Two APP dependencies are injected (the same objects each time); the Receipt is published."""
    journal = Journal()
    app, broker = shop_app(journal)
    seen: list[tuple[int, int]] = []

    @app.subscriber("orders")
    @app.publisher("receipts")
    async def price(order: Order, prices: FromDishka[Prices], tax: FromDishka[Tax]) -> Receipt:
        seen.append((id(prices), id(tax)))
        total = prices.table[order.item] * order.quantity * (1 + tax.rate)
        return Receipt(item=order.item, total=round(total, 2))

    async with app:
        await app.publish("orders", Order(item="apple", quantity=4))
        await app.publish("orders", {"item": "pear", "quantity": 2}, key="customer-7")
        await drained(broker)
    receipts = broker.messages("receipts")
    assert [json.loads(m.value) for m in receipts] == [
        {"item": "apple", "total": 2.2},
        {"item": "pear", "total": 1.65},
    ]
    assert receipts[1].key == b"customer-7"  # the input's key goes with the result
    assert len(set(seen)) == 1


async def test_a_request_scope_is_opened_per_message_and_closed_after_it() -> None:
    """A REQUEST dependency is made from the Message and finalized after each message."""
    journal = Journal()
    app, broker = shop_app(journal)

    @app.subscriber("orders")
    async def record(order: Order, trace: FromDishka[Trace], message: Message) -> None:
        journal(f"handle {trace.coordinates} {message.offset}")

    async with app:
        await app.publish("orders", Order(item="apple", quantity=1))
        await app.publish("orders", Order(item="pear", quantity=1))
        await drained(broker)
    assert journal.events == [
        "+Trace 0",
        "handle orders[0]@0 0",
        "-Trace 0",
        "+Trace 1",
        "handle orders[0]@1 1",
        "-Trace 1",
    ]


async def test_message_metadata_is_injected_by_annotation() -> None:
    """A parameter annotated Message gets topic, partition, offset, key, headers and attempt."""
    app, broker = app_on_memory()
    received: list[Message] = []

    @app.subscriber("events")
    async def handle(body: bytes, message: Message) -> None:
        received.append(message)

    async with app:
        await app.publish("events", b"\x00raw", key=b"k", headers={"trace-id": "abc"})
        await drained(broker)
    (message,) = received
    assert (message.topic, message.partition, message.offset) == ("events", 0, 0)
    assert message.value == b"\x00raw"
    assert message.key == b"k"
    assert message.header("trace-id") == "abc"
    assert message.attempt == 1
    assert message.timestamp.year >= 2024


@dataclass
class Point:
    x: int
    y: int


async def test_bodies_decode_per_annotation() -> None:
    """Bytes and str come raw; a dataclass or list is validated from JSON by pydantic."""
    app, broker = app_on_memory()
    got: list[object] = []

    @app.subscriber("raw")
    async def raw(body: bytes) -> None:
        got.append(body)

    @app.subscriber("text")
    async def text(body: str) -> None:
        got.append(body)

    @app.subscriber("points")
    async def points(body: list[Point]) -> None:
        got.append(body)

    async with app:
        await app.publish("raw", b"\xff")
        await drained(broker)
        await app.publish("text", "héllo")
        await drained(broker)
        await app.publish("points", [Point(1, 2)])
        await drained(broker)
    assert got == [b"\xff", "héllo", [Point(1, 2)]]


async def test_sync_handlers_run_in_a_worker_thread() -> None:
    """A sync handler runs outside the event loop thread, and its result is published."""
    import threading

    app, broker = app_on_memory()
    threads: list[str] = []

    @app.subscriber("in")
    @app.publisher("out")
    def shout(text: str) -> str:
        threads.append(threading.current_thread().name)
        return text.upper()

    async with app:
        await app.publish("in", "hi")
        await drained(broker)
    assert threads != [threading.current_thread().name]
    assert [m.value for m in broker.messages("out")] == [b"HI"]


async def test_a_publisher_injected_into_a_handler_sends_several_messages() -> None:
    """FromDishka[Publisher] publishes to topics chosen at run time, with keys and headers."""
    app, broker = app_on_memory()

    @app.subscriber("batches")
    async def split(items: list[str], publisher: FromDishka[Publisher]) -> None:
        for item in items:
            await publisher.publish(
                f"items.{item}", {"item": item}, key=item, headers={"from": "split"}
            )

    async with app:
        await app.publish("batches", ["a", "b"])
        await drained(broker)
    (a,) = broker.messages("items.a")
    assert (json.loads(a.value), a.key, a.header("from")) == ({"item": "a"}, b"a", "split")
    assert len(broker.messages("items.b")) == 1


async def test_outgoing_sets_the_key_and_headers_of_a_returned_value() -> None:
    """A handler returning Outgoing(value, key=..., headers=...) publishes with them."""
    app, broker = app_on_memory()

    @app.subscriber("in")
    @app.publisher("out")
    async def route(text: str) -> Outgoing:
        return Outgoing({"text": text}, key="k1", headers={"kind": "greeting"})

    async with app:
        await app.publish("in", "hello")
        await drained(broker)
    (out,) = broker.messages("out")
    assert (out.key, out.header("kind"), json.loads(out.value)) == (
        b"k1",
        "greeting",
        {"text": "hello"},
    )


async def test_a_publisher_function_publishes_its_return_value_when_called() -> None:
    """@app.publisher on a plain async function publishes what each call returns."""
    app, broker = app_on_memory()

    @app.publisher("alerts")
    async def alert(level: str) -> dict[str, str]:
        return {"level": level}

    async with app:
        assert await alert("high") == {"level": "high"}
    assert [json.loads(m.value) for m in broker.messages("alerts")] == [{"level": "high"}]


async def test_handlers_from_a_router_are_included() -> None:
    """A Router's subscribers and publishers work once included in the app."""
    broker = MemoryBroker()
    router = Router()

    @router.subscriber("in")
    @router.publisher("out")
    async def echo(text: str) -> str:
        return text

    app = App(broker=broker)
    app.include_router(router)
    async with app:
        await app.publish("in", "x")
        await drained(broker)
    assert [m.value for m in broker.messages("out")] == [b"x"]


class Unprovided:
    """Nobody provides it."""


async def test_a_handler_parameter_nobody_provides_fails_the_start_naming_it() -> None:
    """The start fails before any resource is set up, naming the handler and the parameter."""
    journal = Journal()
    app, _ = shop_app(journal)

    @app.subscriber("orders")
    async def handle(order: Order, thing: FromDishka[Unprovided]) -> None:
        """Never runs."""

    with pytest.raises(DependencyError) as caught:
        await app.__aenter__()
    assert caught.value.what.startswith("handler test_a_handler_parameter_nobody_provides")
    assert caught.value.what.endswith("<locals>.handle")
    assert caught.value.parameter == "thing"
    assert "Unprovided" in str(caught.value)
    assert journal.events == []


class Model:
    """A resource whose setup fails."""


async def test_a_failing_resource_names_the_handler_that_needs_it() -> None:
    """The dependency path of a failed resource starts at the handler that asked for it."""

    class Broken(Provider):
        @provide(scope=Scope.APP)
        async def model(self) -> AsyncIterator[Model]:
            raise OSError("weights missing")
            yield Model()  # type: ignore[unreachable]  # makes this a generator provider

    app = App(Broken())

    @app.subscriber("input")
    async def predict(data: bytes, model: FromDishka[Model]) -> None:
        """Never runs."""

    with pytest.raises(StartupError) as caught:
        await app.__aenter__()
    assert caught.value.path[0].startswith("handler ")
    assert caught.value.path[0].endswith("predict")
    assert caught.value.path[1:] == ("Model",)


def test_two_body_parameters_are_refused_at_registration() -> None:
    """A handler with two undecorated parameters is a ConfigurationError naming both."""
    app = App()
    with pytest.raises(
        ConfigurationError, match=r"parameters 'order', 'prices' all look like the message body"
    ):

        @app.subscriber("orders")
        async def handle(order: Order, prices: Prices) -> None:
            """Never runs."""


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"topic": ""}, "a topic must be a non-empty string"),
        ({"topic": "t", "group": ""}, "group must be a non-empty string or None"),
        ({"topic": "t", "max_concurrency": 0}, "max_concurrency must be a whole number >= 1"),
        ({"topic": "t", "retry": 3}, "retry must be a Retry(...) or None"),
        ({"topic": "t", "dead_letter": ""}, "a topic must be a non-empty string"),
        ({"topic": "t", "dead_letter": "t"}, "sends failed messages of 't' back to 't'"),
        ({"topic": "t", "dead_letter": "{topic}"}, "sends failed messages of 't' back to 't'"),
    ],
)
def test_bad_subscriber_arguments_are_refused(arguments: dict[str, object], message: str) -> None:
    """Each bad subscriber argument raises ConfigurationError saying what is wrong."""
    app = App()
    topic = arguments.pop("topic")
    with pytest.raises(ConfigurationError) as caught:
        app.subscriber(topic, **arguments)  # type: ignore[arg-type]
    assert message in str(caught.value)


async def test_a_sync_function_that_only_publishes_is_refused_at_startup() -> None:
    """A sync non-subscriber function under @publisher could not publish: the start fails."""
    app = App()

    @app.publisher("out")
    def make() -> str:
        return "x"  # pragma: no cover - never called

    with pytest.raises(ConfigurationError, match="must be async"):
        await app.__aenter__()


async def test_publishing_outside_a_run_is_a_state_error() -> None:
    """app.publish on a stopped app raises LifespanStateError."""
    with pytest.raises(LifespanStateError, match="cannot publish: the app is stopped"):
        await App().publish("t", b"x")


async def test_the_users_own_message_context_is_accepted() -> None:
    """A user's from_context(provides=Message, scope=REQUEST) is allowed next to the app's."""
    from di_lifespan import from_context

    class WithMessage(Provider):
        message = from_context(provides=Message, scope=Scope.REQUEST)

        @provide(scope=Scope.REQUEST)
        def trace(self, message: Message) -> Trace:
            return Trace(message)

    app, broker = app_on_memory(WithMessage())
    seen: list[str] = []

    @app.subscriber("t")
    async def handle(body: bytes, trace: FromDishka[Trace]) -> None:
        seen.append(trace.coordinates)

    async with app:
        await app.publish("t", b"x")
        await drained(broker)
    assert seen == ["t[0]@0"]


async def test_a_handler_stays_a_plain_function_for_direct_calls() -> None:
    """Under @subscriber and @publisher the name is the plain function: a call just returns."""
    app = App()

    @app.subscriber("in")
    @app.publisher("out")
    async def double(number: int) -> int:
        return number * 2

    assert await double(21) == 42  # no running app needed: nothing is published


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"backoff": math.inf}, "Retry(backoff=...): expected a finite number of seconds >= 0"),
        ({"backoff": math.nan}, "Retry(backoff=...): expected a finite number of seconds >= 0"),
        ({"max_backoff": math.inf}, "Retry(max_backoff=...): expected a finite number"),
        ({"max_backoff": -1}, "Retry(max_backoff=...): expected a finite number"),
    ],
)
def test_retry_refuses_pauses_that_are_not_finite(arguments: dict[str, Any], message: str) -> None:
    """An infinite or NaN backoff would stall or break the retry loop: refused when made."""
    with pytest.raises(ConfigurationError) as caught:
        Retry(**arguments)
    assert message in str(caught.value)


class Deep:
    """Provided at ACTION scope, deeper than a handler's REQUEST scope."""


async def test_a_dependency_deeper_than_request_fails_the_start_naming_it() -> None:
    """A FromDishka type given only at ACTION scope fails the start, naming scope and handler."""

    class Deeper(Provider):
        deep = provide(Deep, scope=Scope.ACTION)

    app = App(Deeper())

    @app.subscriber("t")
    async def handle(body: bytes, deep: FromDishka[Deep]) -> None:
        """Never runs."""

    with pytest.raises(DependencyError) as caught:
        await app.__aenter__()
    assert caught.value.parameter == "deep"
    assert caught.value.what.endswith("<locals>.handle")
    assert "provided at ACTION scope, deeper than REQUEST" in str(caught.value)


class Counter:
    """An APP factory with cache=False: a new one each time dishka is asked."""

    made = 0

    def __init__(self) -> None:
        Counter.made += 1
        self.number = Counter.made


async def test_an_uncached_app_dependency_is_made_per_message() -> None:
    """cache=False at APP scope gives a fresh value per message, as dishka would."""

    class Uncached(Provider):
        counter = provide(Counter, scope=Scope.APP, cache=False)

    broker = MemoryBroker()
    app = App(Uncached(), broker=broker)
    seen: list[int] = []

    @app.subscriber("t")
    async def plain(body: bytes, counter: FromDishka[Counter]) -> None:
        seen.append(counter.number)

    @app.subscriber("t")
    async def with_request(body: bytes, counter: FromDishka[Counter], message: Message) -> None:
        seen.append(counter.number)

    async with app:
        for value in (b"a", b"b"):
            await app.publish("t", value)
        await drained(broker)
    assert len(seen) == 4
    assert len(set(seen)) == 4


class Greeter:
    """A handler that is an object: its async __call__ handles the messages."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    async def __call__(self, name: str, tax: FromDishka[Tax]) -> str:
        return f"{self.greeting} {name} {tax.rate}"


async def tagged(name: str, prices: FromDishka[Prices], *, tag: str) -> str:
    """A handler function that takes a tag a partial binds."""
    return f"{tag} {name} {prices.table['apple']}"


async def test_partials_and_callable_objects_are_handlers() -> None:
    """functools.partial and objects with an async __call__ are handled like functions."""
    broker = MemoryBroker()
    app = App(Shop(Journal()), broker=broker)
    app.publisher("out")(app.subscriber("names")(Greeter("hello")))
    app.publisher("out")(app.subscriber("names")(functools.partial(tagged, tag="tagged")))
    async with app:
        await app.publish("names", "ada")
        await drained(broker)
    assert sorted(m.value for m in broker.messages("out")) == [b"hello ada 0.1", b"tagged ada 0.5"]
    assert [spec.name for spec in app._router.all_handlers()] == ["Greeter", "tagged"]


async def test_a_subscriber_registered_on_a_running_app_is_refused() -> None:
    """The run has already taken its handlers: registering one now is a LifespanStateError."""
    app = App()
    async with app:
        with pytest.raises(LifespanStateError) as caught:

            @app.subscriber("late")
            async def late(body: bytes) -> None:
                """Never registered."""

        assert str(caught.value).startswith("cannot register handler ")
        assert str(caught.value).endswith("<locals>.late: the app is running")
        with pytest.raises(LifespanStateError, match="cannot include a router"):
            app.include_router(Router())
    assert app._router.all_handlers() == []


async def test_a_router_included_in_two_apps_works_in_both() -> None:
    """Each app runs the router's handlers, and a publishing function uses the running app."""
    router = Router()

    @router.subscriber("in")
    @router.publisher("out")
    async def echo(text: str) -> str:
        return text

    @router.publisher("made")
    async def make(text: str) -> str:
        return text

    brokers = {"first": MemoryBroker(), "second": MemoryBroker()}
    apps = {text: App(broker=broker) for text, broker in brokers.items()}
    for app in apps.values():
        app.include_router(router)
    for text, app in apps.items():
        broker = brokers[text]
        async with app:
            await app.publish("in", text)
            await make(text)
            await drained(broker)
        assert [m.value for m in broker.messages("out")] == [text.encode()]
        assert [m.value for m in broker.messages("made")] == [text.encode()]


async def test_a_router_running_in_two_apps_at_once_refuses_to_guess() -> None:
    """A publishing function whose router runs in two apps at once says so, naming itself."""
    router = Router()

    @router.publisher("made")
    async def make() -> str:
        return "x"

    first, second = App(), App()
    first.include_router(router)
    second.include_router(router)
    async with first, second:
        with pytest.raises(ConfigurationError, match=r"included in 2 running apps"):
            await make()


def test_a_subscribers_default_group_is_named_after_its_handler_however_it_is_started(
    tmp_path: Path,
) -> None:
    """`python svc.py`, `python -m svc` and `import svc` all give the group "svc.handle"."""
    (tmp_path / "svc.py").write_text(
        "from di_lifespan import App\n"
        "app = App()\n"
        "@app.subscriber('t')\n"
        "async def handle(body: bytes) -> None: ...\n"
        "print(app._router.handlers[0].group)\n"
    )
    environment = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    groups = {
        subprocess.run(
            [sys.executable, *how],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for how in (["svc.py"], ["-m", "svc"], ["-c", "import svc"])
    }
    assert groups == {"svc.handle"}
