"""Failures at run time, on the memory broker: a resource down, hung handlers, bad finalizers.

Each stream case counts its inputs, outputs and dead letters by id (tests/reliability/figures.py):
whatever fails, every input ends as an output or a dead letter, once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from di_lifespan import (
    DEAD_LETTER_HEADERS,
    App,
    FromDishka,
    MemoryBroker,
    Message,
    Provider,
    Retry,
    Scope,
    ShutdownError,
    ShutdownStepError,
    ShutdownTimeoutError,
    provide,
)
from tests.drain import drained
from tests.reliability.figures import Figures
from tests.resources import Journal

ATTEMPTS = 3


class Pool:
    """A pool whose calls fail while it is down: ``failing`` calls from call ``down_at`` on."""

    def __init__(self, down_at: int, failing: int) -> None:
        self.calls = 0
        self.down_at = down_at
        self.failing = failing
        self.closed = False

    async def query(self, number: int) -> int:
        """The row for ``number``; ConnectionError while the pool is down."""
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        if self.down_at <= self.calls < self.down_at + self.failing:
            raise ConnectionError("pool: connection refused")
        return number


class PoolProvider(Provider):
    """The pool as an APP resource, closed by its finalizer."""

    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self._pool = pool

    @provide(scope=Scope.APP)
    async def pool(self) -> AsyncIterator[Pool]:
        yield self._pool
        self._pool.closed = True


def outcome(broker: MemoryBroker, figures: Figures, output: str, dead: str) -> None:
    """Count the ids on the output and dead-letter topics into ``figures``."""
    figures.count(
        outputs=(json.loads(m.value) for m in broker.messages(output)),
        dead_letters=(json.loads(m.value) for m in broker.messages(dead)),
    )


async def test_a_pool_that_fails_for_a_while_gives_retries_then_dead_letters_and_work_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pool down for 7 calls: 2 messages spend their 3 attempts and are dead-lettered, no more."""
    caplog.set_level(logging.WARNING, logger="di_lifespan")
    figures = Figures("resource-failing", inputs=100)
    # one partition, one at a time: message 40 makes calls 41-43, 41 makes 44-46, 42 makes 47
    # (failed) and 48 (its retry, which passes)
    pool = Pool(down_at=41, failing=7)
    broker = MemoryBroker()
    app = App(PoolProvider(pool), broker=broker)

    @app.subscriber("orders", group="g", retry=Retry(attempts=ATTEMPTS, backoff=0.001))
    @app.publisher("rows")
    async def lookup(number: int, db: FromDishka[Pool]) -> int:
        return await db.query(number)

    with anyio.fail_after(10):
        async with app:
            for number in range(figures.inputs):
                await app.publish("orders", number)
            await drained(broker)
    outcome(broker, figures, "rows", "orders.dlq")
    figures.notes.update(pool_calls=pool.calls, failing_calls=pool.failing)
    figures.report()
    assert figures.lost == []
    assert figures.duplicates == 0
    assert sorted(figures.dead_letters) == [40, 41]
    for letter in broker.messages("orders.dlq"):
        assert letter.header(DEAD_LETTER_HEADERS["error_type"]) == "ConnectionError"
        assert letter.header(DEAD_LETTER_HEADERS["attempts"]) == str(ATTEMPTS)
    assert pool.calls == figures.inputs - 2 + pool.failing  # two never passed
    assert pool.closed
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == pool.failing - 2  # the last attempt of each dead letter is not retried
    assert "orders[0]@42 failed (attempt 1 of 3)" in retries[-1]


async def test_hung_handlers_are_cut_by_handler_timeout_and_the_others_go_on() -> None:
    """Handlers that hang are cancelled at handler_timeout, retried, then dead-lettered."""
    figures = Figures("handler-hangs", inputs=60)
    broker = MemoryBroker(partitions=4)
    app = App(broker=broker, graceful_timeout=1)
    always_hang = {7, 27, 47}
    hang_once = {13, 33}
    attempts: dict[int, int] = {}

    @app.subscriber(
        "jobs",
        group="g",
        max_concurrency=4,
        retry=Retry(attempts=2, backoff=0),
        handler_timeout=0.05,
    )
    @app.publisher("done")
    async def work(number: int, message: Message) -> int:
        attempts[number] = message.attempt
        if number in always_hang or (number in hang_once and message.attempt == 1):
            await anyio.sleep_forever()
        await anyio.sleep(0.001)
        return number

    started = time.monotonic()
    with anyio.fail_after(10):
        async with app:
            for number in range(figures.inputs):
                await app.publish("jobs", number, key=str(number))
            await drained(broker)
    elapsed = time.monotonic() - started
    outcome(broker, figures, "done", "jobs.dlq")
    figures.notes["hung_attempts"] = 2 * len(always_hang) + len(hang_once)
    figures.report()
    assert figures.lost == []
    assert figures.duplicates == 0
    assert set(figures.dead_letters) == always_hang
    assert all(attempts[n] == 2 for n in always_hang | hang_once)
    for letter in broker.messages("jobs.dlq"):
        assert letter.header(DEAD_LETTER_HEADERS["error_type"]) == "HandlerTimeoutError"
    # the hung attempts overlap on four workers: far less than one handler_timeout each in turn
    assert elapsed < 5


class First: ...


class Hangs: ...


class Third: ...


class Raises: ...


class Fifth: ...


class BadFinalizers(Provider):
    """First -> Hangs -> Third -> Raises -> Fifth; each finalizer writes to the journal."""

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    @provide(scope=Scope.APP)
    def first(self) -> Iterator[First]:
        yield First()
        self.journal("-First")

    @provide(scope=Scope.APP)
    async def hangs(self, first: First) -> AsyncIterator[Hangs]:
        yield Hangs()
        self.journal("-Hangs")
        await anyio.sleep_forever()

    @provide(scope=Scope.APP)
    async def third(self, hangs: Hangs) -> AsyncIterator[Third]:
        yield Third()
        self.journal("-Third")

    @provide(scope=Scope.APP)
    async def raises(self, third: Third) -> AsyncIterator[Raises]:
        yield Raises()
        self.journal("-Raises")
        raise OSError("socket already closed")

    @provide(scope=Scope.APP)
    async def fifth(self, raises: Raises) -> AsyncIterator[Fifth]:
        yield Fifth()
        self.journal("-Fifth")


async def test_a_hanging_and_a_raising_finalizer_let_the_others_run_and_the_exit_is_bounded() -> (
    None
):
    """One finalizer hangs, one raises: all five run, the stop takes about shutdown_timeout."""
    limit = 0.3
    figures = Figures("finalizers-hang-and-raise", inputs=10)
    journal = Journal()
    broker = MemoryBroker()
    app = App(BadFinalizers(journal), broker=broker, shutdown_timeout=limit)
    handled: list[int] = []

    @app.subscriber("jobs", group="g")
    async def work(number: int, fifth: FromDishka[Fifth]) -> None:
        handled.append(number)

    @app.after_shutdown
    def stopped() -> None:
        journal("after_shutdown")

    with pytest.raises(ShutdownError) as caught:  # noqa: PT012  # the whole run is under test
        async with app:
            for number in range(10):
                await app.publish("jobs", number)
            await drained(broker)
            leaving = time.monotonic()
    took = time.monotonic() - leaving
    figures.count(outputs=handled)
    figures.notes.update(shutdown_timeout=f"{limit}s", stop_took=f"{took:.2f}s")
    figures.report()
    assert journal.events == [
        "after_shutdown",
        "-Fifth",
        "-Raises",
        "-Third",
        "-Hangs",
        "-First",
    ]
    assert broker.committed("g", "jobs") == [10]
    steps = {failure.step: failure for failure in caught.value.exceptions}
    assert sorted(steps) == ["finalizer of Hangs", "finalizer of Raises"]
    assert isinstance(steps["finalizer of Hangs"], ShutdownTimeoutError)
    assert isinstance(steps["finalizer of Raises"], ShutdownStepError)
    assert "OSError: socket already closed" in str(caught.value)
    assert limit <= took < limit + 1.0
