"""The test client: the whole lifespan in a test, resources swapped by type, nothing leaking."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pydantic
import pytest
from pydantic import BaseModel

from di_lifespan import (
    DEAD_LETTER_HEADERS,
    App,
    ConfigurationError,
    FromDishka,
    Message,
    Provider,
    Publisher,
    Retry,
    Scope,
    ShutdownError,
    ShutdownTimeoutError,
    provide,
)
from di_lifespan.testing import TestClient, override
from tests.resources import Journal


class Settings(BaseModel):
    threshold: float = 2.5


class Model:
    """The real model: its setup must never run in tests that override it."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def predict(self, petal_length: float) -> str:
        return "setosa" if petal_length < self.threshold else "versicolor"


class RequestId:
    """REQUEST-scoped, made from the message."""

    def __init__(self, value: str) -> None:
        self.value = value


class Flower(BaseModel):
    petal_length: float


class Prediction(BaseModel):
    species: str
    request: str


JOURNAL = Journal()


class Resources(Provider):
    @provide(scope=Scope.APP)
    async def model(self, settings: Settings) -> AsyncIterator[Model]:
        JOURNAL("+real Model")
        yield Model(settings.threshold)
        JOURNAL("-real Model")

    @provide(scope=Scope.REQUEST)
    def request_id(self, message: Message) -> RequestId:
        return RequestId(f"{message.topic}@{message.offset}")


def make_app() -> App:
    """The app under test: a predictor, and an auditor fed by the predictor's output."""
    app = App(Resources(), settings=Settings)

    @app.subscriber("flowers")
    @app.publisher("predictions")
    async def predict(
        flower: Flower, model: FromDishka[Model], request: FromDishka[RequestId]
    ) -> Prediction:
        if flower.petal_length > 100:
            raise ValueError("petal longer than a metre")
        return Prediction(species=model.predict(flower.petal_length), request=request.value)

    @app.subscriber("predictions", retry=Retry(attempts=2, backoff=0.001))
    @app.publisher("audit")
    async def audit(prediction: Prediction) -> str:
        return f"audited {prediction.species}"

    return app


APP = make_app()


class FakeModel(Model):
    def predict(self, petal_length: float) -> str:
        return "fake"


class FakeResources(Provider):
    @provide(scope=Scope.APP)
    def model(self) -> Iterator[Model]:
        JOURNAL("+fake Model")
        yield FakeModel(0)
        JOURNAL("-fake Model")


async def test_an_app_resource_is_replaced_and_the_real_one_never_set_up() -> None:
    """An override provider replaces Model: the real setup and finalizer never run."""
    JOURNAL.events.clear()
    async with TestClient(APP, overrides=[FakeResources()]) as client:
        await client.publish("flowers", {"petal_length": 1.0})
        assert client.published("predictions") == [{"species": "fake", "request": "flowers@0"}]
        assert isinstance(await client.container.get(Model), FakeModel)
    assert JOURNAL.events == ["+fake Model", "-fake Model"]


async def test_a_handler_chain_is_awaited_by_one_publish() -> None:
    """Publish returns only once the message and the messages it caused are all handled."""
    async with TestClient(APP, overrides=[override(Model, FakeModel(0))]) as client:
        await client.publish("flowers", {"petal_length": 1.0})
        assert client.published("audit") == ["audited fake"]
        assert client.published("predictions", Prediction) == [
            Prediction(species="fake", request="flowers@0"),
        ]


async def test_a_request_resource_is_replaced() -> None:
    """override(RequestId, value) replaces the REQUEST-scoped provider for every message."""
    async with TestClient(APP, overrides=[override(RequestId, RequestId("fixed"))]) as client:
        await client.publish("flowers", {"petal_length": 1.0})
        await client.publish("flowers", {"petal_length": 9.0})
        assert [p["request"] for p in client.published("predictions")] == ["fixed", "fixed"]


async def test_settings_are_replaced() -> None:
    """override(Settings, ...) feeds the real Model's setup with test settings."""
    JOURNAL.events.clear()
    async with TestClient(APP, overrides=[override(Settings, Settings(threshold=10.0))]) as client:
        await client.publish("flowers", {"petal_length": 5.0})
        assert client.published("predictions")[0]["species"] == "setosa"
    assert JOURNAL.events == ["+real Model", "-real Model"]


async def test_overrides_do_not_leak_from_one_run_to_the_next() -> None:
    """Two runs of the same app object with different fakes each see only their own."""
    async with TestClient(APP, overrides=[override(Model, FakeModel(0))]) as client:
        await client.publish("flowers", {"petal_length": 1.0})
        assert client.published("predictions")[0]["species"] == "fake"
    async with TestClient(APP) as client:
        await client.publish("flowers", {"petal_length": 1.0})
        assert client.published("predictions") == [{"species": "setosa", "request": "flowers@0"}]
    assert APP.status == "stopped"


async def test_a_handler_error_reaches_the_test() -> None:
    """With the default raise_handler_errors, the handler's own exception is raised by publish."""
    async with TestClient(APP, overrides=[override(Model, FakeModel(0))]) as client:
        with pytest.raises(ValueError, match="petal longer than a metre"):
            await client.publish("flowers", {"petal_length": 500})
        await client.publish("flowers", {"petal_length": 1.0})  # the app goes on
        assert len(client.published("predictions")) == 1


async def test_an_invalid_body_raises_the_validation_error() -> None:
    """A body that does not validate raises pydantic's ValidationError in the test."""
    async with TestClient(APP, overrides=[override(Model, FakeModel(0))]) as client:
        with pytest.raises(pydantic.ValidationError, match="petal_length"):
            await client.publish("flowers", {"petal": 1})


async def test_dead_letters_can_be_asserted_on_instead() -> None:
    """With raise_handler_errors=False the delivery policy runs and the DLQ can be checked."""
    client = TestClient(APP, overrides=[override(Model, FakeModel(0))], raise_handler_errors=False)
    async with client:
        await client.publish("flowers", {"petal_length": 500}, key="f1")
        (dead,) = client.messages("flowers.dlq")
        assert dead.key == b"f1"
        assert dead.header(DEAD_LETTER_HEADERS["error"]) == "petal longer than a metre"
        assert dead.header(DEAD_LETTER_HEADERS["attempts"]) == "3"


class NotInTheApp:
    """The app provides no such type."""


async def test_overriding_a_type_the_app_lacks_fails_naming_it() -> None:
    """Overriding a type the app does not provide is a ConfigurationError naming the type."""
    with pytest.raises(ConfigurationError) as caught:
        async with TestClient(APP, overrides=[override(NotInTheApp, NotInTheApp())]):
            pass  # pragma: no cover - never entered
    assert str(caught.value) == (
        "override(NotInTheApp, ...): the app provides no NotInTheApp, so there is nothing to"
        " override (add it to the app's providers, or fix the type)"
    )
    assert APP.status == "stopped"


async def test_an_override_provider_with_an_unknown_type_fails_naming_it() -> None:
    """A provider in overrides giving a type the app lacks is refused, naming the provider."""

    class Extra(Provider):
        @provide(scope=Scope.APP)
        def thing(self) -> NotInTheApp:
            return NotInTheApp()  # pragma: no cover - never resolved

    with pytest.raises(
        ConfigurationError, match=r"override provider Extra: the app provides no NotInTheApp"
    ):
        async with TestClient(APP, overrides=[Extra()]):
            pass  # pragma: no cover - never entered


def test_bad_overrides_are_refused_by_position() -> None:
    """An entry of overrides that is neither a provider nor override(...) is named by position."""
    with pytest.raises(ConfigurationError, match=r"TestClient\(overrides=...\) item 1"):
        TestClient(APP, overrides=[FakeModel(0)])  # type: ignore[list-item]


async def test_the_client_uses_its_own_memory_broker_whatever_the_app_names() -> None:
    """An app configured for another broker still runs on the client's memory broker."""
    from di_lifespan import MemoryBroker

    own = MemoryBroker()
    app = App(broker=own)
    seen: list[bytes] = []

    @app.subscriber("t")
    async def handle(body: bytes) -> None:
        seen.append(body)

    async with TestClient(app) as client:
        await client.publish("t", b"x")
    assert seen == [b"x"]
    assert own.messages("t") == []


async def test_a_handler_that_never_finishes_fails_the_publish_with_a_timeout() -> None:
    """Publish gives up after settle_timeout; the stuck handler is reported at exit."""
    import anyio

    app = App(graceful_timeout=0.01)

    @app.subscriber("t")
    async def stuck(body: bytes) -> None:
        await anyio.sleep_forever()

    with pytest.raises(ShutdownError) as stopped:  # noqa: PT012  # the exit is under test too
        async with TestClient(app, settle_timeout=0.05) as client:
            with pytest.raises(
                TimeoutError, match=r"1 message\(s\) still not handled after 0.05 s, in t \(1\)"
            ):
                await client.publish("t", b"x")
    (timeout,) = stopped.value.exceptions
    assert isinstance(timeout, ShutdownTimeoutError)
    assert timeout.step == f"subscriber {stuck.__qualname__} (graceful_timeout)"


class RecordingPublisher(Publisher):
    """A fake Publisher: records what handlers send instead of sending it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def publish(self, topic: str, value: Any, **options: Any) -> None:
        self.sent.append((topic, value))


async def test_the_publisher_can_be_overridden() -> None:
    """override(Publisher, fake) gives handlers the fake; returned values are still sent."""
    app = App()

    @app.subscriber("orders")
    @app.publisher("counts")
    async def fan_out(items: list[str], publisher: FromDishka[Publisher]) -> int:
        for item in items:
            await publisher.publish(f"items.{item}", item)
        return len(items)

    fake = RecordingPublisher()
    async with TestClient(app, overrides=[override(Publisher, fake)]) as client:
        await client.publish("orders", ["apple", "pear"])
        assert client.messages("items.apple") == []
        assert client.published("counts") == [2]
    assert fake.sent == [("items.apple", "apple"), ("items.pear", "pear")]


class Weights:
    """A resource type for the override checks."""


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: override(Weights, "not weights"),  # type: ignore[arg-type]  # the mistake under test
            "override(Weights, ...): expected a Weights instance, got 'not weights'",
        ),
        (
            lambda: override(Weights, Weights),  # type: ignore[arg-type]  # the mistake under test
            "override(Weights, ...): expected a Weights instance, got the class Weights",
        ),
        (
            lambda: TestClient(App(), overrides=override(Weights, Weights())),  # type: ignore[arg-type]  # the mistake under test
            "TestClient(overrides=...): expected a list of overrides: wrap it in [...]",
        ),
        (
            lambda: TestClient(App(), overrides={Weights: Weights()}),  # type: ignore[arg-type]  # the mistake under test
            "TestClient(overrides=...): expected a list, not a dict:"
            " write [override(Type, value), ...]",
        ),
    ],
    ids=["wrong-value", "a-class", "not-a-list", "a-dict"],
)
def test_malformed_overrides_are_refused_saying_what_to_write(
    make: Callable[[], object], message: str
) -> None:
    """An override of the wrong type, or overrides not in a list, are refused at once."""
    with pytest.raises(ConfigurationError) as caught:
        make()
    assert str(caught.value) == message
