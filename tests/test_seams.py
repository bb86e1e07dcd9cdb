"""The public seams: running an app's lifespan on another broker, structured log records."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from di_lifespan import (
    DEAD_LETTER_HEADERS,
    App,
    FromDishka,
    MemoryBroker,
    Provider,
    Retry,
    Scope,
    provide,
)
from di_lifespan.testing import override
from tests.drain import drained
from tests.resources import Journal


class Model:
    """The real resource."""

    name = "real"


class FakeModel(Model):
    """What a test or a local run swaps in."""

    name = "fake"


class Real(Provider):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    @provide(scope=Scope.APP)
    async def model(self) -> AsyncIterator[Model]:
        self.journal("+Model")
        yield Model()
        self.journal("-Model")


async def test_lifespan_runs_the_app_on_another_broker_with_overrides() -> None:
    """app.lifespan(broker=..., overrides=...) changes one run, never the app."""
    journal = Journal()
    app = App(Real(journal))
    seen: list[str] = []

    @app.subscriber("jobs", group="workers")
    async def work(body: bytes, model: FromDishka[Model]) -> None:
        seen.append(model.name)

    broker = MemoryBroker()
    async with app.lifespan(broker=broker, overrides=[override(Model, FakeModel())]):
        await app.publish("jobs", b"job")
        await drained(broker)
    assert seen == ["fake"]
    assert journal.events == []  # the real setup never ran
    assert app.broker is not broker
    async with app:  # the app itself is as it was
        assert (await app.container.get(Model)).name == "real"


async def test_delivery_log_records_carry_the_handler_and_the_message_coordinates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retry and dead-letter records are one line each, with handler and coordinates in extra."""
    broker = MemoryBroker()
    app = App(broker=broker)

    @app.subscriber("jobs", group="workers", retry=Retry(attempts=2, backoff=0))
    async def work(body: bytes) -> None:
        raise RuntimeError("no")

    with caplog.at_level(logging.WARNING, logger="di_lifespan"):
        async with app:
            await app.publish("jobs", b"job")
            await drained(broker)
    records = [record for record in caplog.records if hasattr(record, "handler")]
    assert [record.levelno for record in records] == [logging.WARNING, logging.ERROR]
    assert [record.exc_info for record in records] == [None, None]  # one line each
    for record in records:
        fields = (record.handler, record.topic, record.partition, record.offset)  # type: ignore[attr-defined]  # set through extra=
        assert fields == (work.__qualname__, "jobs", 0, 0)


def test_the_dead_letter_header_names_cannot_be_changed() -> None:
    """DEAD_LETTER_HEADERS is a read-only mapping: no code can rename a header for everyone."""
    with pytest.raises(TypeError):
        DEAD_LETTER_HEADERS["error"] = "x-oops"  # type: ignore[index]  # the point of the test
    assert DEAD_LETTER_HEADERS["error"] == "x-error"
