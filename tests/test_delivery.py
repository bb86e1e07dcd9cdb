"""Delivery policy: retries, dead letters, ordering, graceful stop, at-least-once redelivery."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import pytest
from pydantic import BaseModel, PositiveFloat

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
    ShutdownTimeoutError,
    provide,
)
from di_lifespan._delivery import COMMIT_EVERY, COMMIT_SPACING
from tests.drain import drained
from tests.resources import Journal, Refusing, app_on_memory

FAST = Retry(attempts=3, backoff=0.001)


class Flower(BaseModel):
    sepal_length: PositiveFloat


async def test_a_failing_handler_is_retried_then_dead_lettered_with_error_headers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three attempts in all, then the message goes to <topic>.dlq with headers naming why."""
    app, broker = app_on_memory()
    attempts: list[int] = []

    @app.subscriber("orders", group="pricing", retry=FAST)
    async def handle(body: bytes, message: Message) -> None:
        attempts.append(message.attempt)
        raise ValueError(f"cannot price {body.decode()}")

    async with app:
        await app.publish("orders", b"apple", key="k", headers={"trace": "t1"})
        await drained(broker)
    assert attempts == [1, 2, 3]
    (dead,) = broker.messages("orders.dlq")
    assert dead.value == b"apple"
    assert dead.key == b"k"
    assert dead.header("trace") == "t1"  # the original headers are kept
    assert {name: dead.header(header) for name, header in DEAD_LETTER_HEADERS.items()} == {
        "error_type": "ValueError",
        "error": "cannot price apple",
        "topic": "orders",
        "partition": "0",
        "offset": "0",
        "attempts": "3",
    }
    assert broker.committed("pricing", "orders") == [1]  # dead-lettered, so done with
    assert "orders[0]@0 failed (attempt 1 of 3), retrying" in caplog.text
    assert "sent to orders.dlq after 3 attempt(s)" in caplog.text


async def test_a_handler_that_recovers_on_retry_publishes_its_result() -> None:
    """A handler that fails twice and then succeeds publishes once, and nothing is dead-lettered."""
    app, broker = app_on_memory()

    @app.subscriber("in", retry=FAST)
    @app.publisher("out")
    async def flaky(body: bytes, message: Message) -> bytes:
        if message.attempt < 3:
            raise ConnectionError("upstream busy")
        return body

    async with app:
        await app.publish("in", b"x")
        await drained(broker)
    assert [m.value for m in broker.messages("out")] == [b"x"]
    assert broker.messages("in.dlq") == []


async def test_an_invalid_body_is_dead_lettered_at_once_and_the_next_message_is_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body that fails validation skips retries; the log names the field; the stream goes on."""
    app, broker = app_on_memory()
    handled: list[float] = []

    @app.subscriber("flowers", retry=FAST)
    async def measure(flower: Flower) -> None:
        handled.append(flower.sepal_length)

    async with app:
        await app.publish("flowers", {"sepal_length": -1})
        await app.publish("flowers", b"not json")
        await app.publish("flowers", {"sepal_length": 5.1})
        await drained(broker)
    assert handled == [5.1]
    first, second = broker.messages("flowers.dlq")
    assert first.header(DEAD_LETTER_HEADERS["attempts"]) == "1"
    assert first.header(DEAD_LETTER_HEADERS["error_type"]) == "ValidationError"
    assert first.header(DEAD_LETTER_HEADERS["error"]) == (
        "Flower is invalid: sepal_length: Input should be greater than 0 (got -1)"
    )
    assert second.header(DEAD_LETTER_HEADERS["offset"]) == "1"
    assert "flowers[0]@0 has an invalid body: Flower is invalid: sepal_length" in caplog.text
    assert "retrying" not in caplog.text


async def test_dead_letter_none_drops_the_message_with_an_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With dead_letter=None and retry=None a failing message is logged and dropped."""
    app, broker = app_on_memory()

    @app.subscriber("in", retry=None, dead_letter=None)
    async def fail(body: bytes) -> None:
        raise RuntimeError("nope")

    async with app:
        await app.publish("in", b"x")
        await drained(broker)
    assert broker.messages("in.dlq") == []
    assert "in[0]@0 failed: RuntimeError: nope; dropped after 1 attempt(s)" in caplog.text


async def test_a_dead_letter_template_names_the_topic() -> None:
    """dead_letter='errors.{topic}' sends each message's failures to its own topic's queue."""
    app, broker = app_on_memory()

    @app.subscriber("a", "b", retry=None, dead_letter="errors.{topic}")
    async def fail(body: bytes) -> None:
        raise RuntimeError("nope")

    async with app:
        await app.publish("a", b"1")
        await app.publish("b", b"2")
        await drained(broker)
    assert [m.value for m in broker.messages("errors.a")] == [b"1"]
    assert [m.value for m in broker.messages("errors.b")] == [b"2"]


async def test_order_is_kept_per_partition_while_partitions_run_concurrently() -> None:
    """max_concurrency=3 handles three partitions at once; each partition stays in order."""
    broker = MemoryBroker(partitions=3)
    app = App(broker=broker)
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    inside: set[int] = set()
    all_inside = anyio.Event()

    @app.subscriber("events", max_concurrency=3)
    async def handle(number: int, message: Message) -> None:
        inside.add(message.partition)
        if len(inside) == 3:
            all_inside.set()
        with anyio.fail_after(10):  # a guard: serial handling would never get here
            await all_inside.wait()
        seen[message.partition].append(number)

    async with app:
        for number in range(30):
            await app.publish("events", number)  # no key: the partitions take turns
        await drained(broker)
    messages = broker.messages("events")
    for partition, numbers in seen.items():
        stored = [json.loads(m.value) for m in messages if m.partition == partition]
        assert numbers == stored
    assert sum(len(numbers) for numbers in seen.values()) == 30


class Connection:
    """A resource that knows whether it is still open."""

    def __init__(self) -> None:
        self.open = True


class Pool(Provider):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    @provide(scope=Scope.APP)
    async def connection(self) -> AsyncIterator[Connection]:
        connection = Connection()
        yield connection
        connection.open = False
        self.journal("-Connection")


async def test_a_handler_mid_way_at_shutdown_finishes_with_its_resources_open() -> None:
    """Shutdown waits for the handler in hand; it still sees the connection open; then commit."""
    journal = Journal()
    app, broker = app_on_memory(Pool(journal))
    entered = anyio.Event()
    stopping = anyio.Event()

    @app.on_shutdown
    def signal_stop() -> None:
        stopping.set()

    @app.subscriber("jobs", group="workers")
    async def work(body: bytes, connection: FromDishka[Connection]) -> None:
        entered.set()
        await stopping.wait()
        await anyio.lowlevel.checkpoint()
        journal(f"finished with connection open={connection.open}")

    async with app:
        await app.publish("jobs", b"job")
        await entered.wait()
    assert journal.events == ["finished with connection open=True", "-Connection"]
    assert broker.committed("workers", "jobs") == [1]


async def test_a_handler_past_the_graceful_timeout_is_cancelled_and_read_again() -> None:
    """A handler past graceful_timeout is cancelled, reported, not committed, and redelivered."""
    app, broker = app_on_memory(graceful_timeout=0.05)
    runs: list[str] = []
    entered = anyio.Event()

    @app.subscriber("jobs", group="workers")
    async def work(body: bytes) -> None:
        runs.append("start")
        if len(runs) == 1:
            entered.set()
            await anyio.sleep_forever()
        runs.append("done")

    with pytest.raises(ShutdownError) as stopped:  # noqa: PT012  # the whole run is under test
        async with app:
            await app.publish("jobs", b"job")
            await entered.wait()
    (timeout,) = stopped.value.exceptions
    assert isinstance(timeout, ShutdownTimeoutError)
    assert timeout.step == "subscriber " + work.__qualname__ + " (graceful_timeout)"
    assert broker.committed("workers", "jobs") == [0]
    async with app:  # restarted on the same broker: the group gets its uncommitted message
        await drained(broker)
    assert runs == ["start", "start", "done"]
    assert broker.committed("workers", "jobs") == [1]


async def test_a_subscriber_whose_transport_fails_stops_the_app_without_committing() -> None:
    """When a dead letter cannot be sent, the subscriber stops, the app stops with the error."""
    journal = Journal()
    broker = Refusing(MemoryBroker(), {"jobs.dlq"})
    app = App(Pool(journal), broker=broker)

    @app.subscriber("jobs", group="workers", retry=None)
    async def work(body: bytes) -> None:
        raise RuntimeError("bad job")

    with pytest.raises(ShutdownError) as caught:  # noqa: PT012  # the whole run is under test
        async with app:
            await app.publish("jobs", b"job")
            await anyio.sleep_forever()
    (failure,) = caught.value.exceptions
    assert str(failure) == (
        "subscriber test_a_subscriber_whose_transport_fails_stops_the_app_without_committing"
        ".<locals>.work failed: ConnectionError: broker refused a message to jobs.dlq"
    )
    assert broker.committed_count("jobs") == 0
    assert journal.events == ["-Connection"]  # the rest of the shutdown ran


class Price:
    """A result pydantic cannot dump (numpy.int64 fails the same way)."""


async def test_a_result_that_cannot_be_encoded_is_dead_lettered_once_without_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The handler runs once (its side effects are not repeated); the dead letter says why."""
    broker = MemoryBroker()
    app = App(broker=broker)
    calls: list[int] = []

    @app.subscriber("orders", retry=FAST)
    @app.publisher("prices")
    async def price(body: bytes) -> Price:
        calls.append(1)
        return Price()

    async with app:
        await app.publish("orders", b"apple")
        await drained(broker)
    assert calls == [1]
    assert broker.messages("prices") == []
    (dead,) = broker.messages("orders.dlq")
    assert dead.value == b"apple"
    assert dead.header(DEAD_LETTER_HEADERS["error_type"]) == "EncodingError"
    assert dead.header(DEAD_LETTER_HEADERS["attempts"]) == "1"
    assert (dead.header(DEAD_LETTER_HEADERS["error"]) or "").startswith(
        "cannot publish a value of type Price: PydanticSerializationError: Unable to serialize"
    )
    assert "retrying" not in caplog.text
    assert broker.committed("", "orders") == [0]


async def test_retries_stop_at_the_first_result_that_cannot_be_encoded() -> None:
    """A handler that failed once and then returns an unencodable result is not called again."""
    broker = MemoryBroker()
    app = App(broker=broker)
    attempts: list[int] = []

    @app.subscriber("orders", retry=FAST)
    @app.publisher("prices")
    async def price(body: bytes, message: Message) -> Price:
        attempts.append(message.attempt)
        if message.attempt == 1:
            raise ConnectionError("price service busy")
        return Price()

    async with app:
        await app.publish("orders", b"apple")
        await drained(broker)
    assert attempts == [1, 2]
    (dead,) = broker.messages("orders.dlq")
    assert dead.header(DEAD_LETTER_HEADERS["error_type"]) == "EncodingError"
    assert dead.header(DEAD_LETTER_HEADERS["attempts"]) == "2"


class Order(BaseModel):
    quantity: PositiveFloat
    items: list[PositiveFloat] = []
    prices: dict[str, PositiveFloat] = {}


HUGE = 2_000_000
HUGE_BODIES = {
    "not JSON": b"x" * HUGE,
    "a huge field": json.dumps({"quantity": "q" * HUGE}).encode(),
    "a huge key": json.dumps({"quantity": 1, "prices": {"k" * HUGE: -1}}).encode(),
    "many wrong items": json.dumps({"quantity": 1, "items": [-1] * 20_000}).encode(),
}


@pytest.mark.parametrize("body", HUGE_BODIES.values(), ids=HUGE_BODIES.keys())
async def test_a_huge_invalid_body_gives_a_small_dead_letter_and_short_log_lines(
    body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """x-error stays within 4 KiB and log lines short, however big the body; the body is kept."""
    broker = MemoryBroker(max_message_bytes=8 * HUGE)
    app = App(broker=broker)

    @app.subscriber("orders", retry=FAST)
    async def take(order: Order) -> None:
        raise AssertionError("an invalid body never reaches the handler")

    async with app:
        await app.publish("orders", body, headers={"trace": "t1"})
        await drained(broker)
    (dead,) = broker.messages("orders.dlq")
    assert dead.value == body
    assert dead.header("trace") == "t1"
    added = {name: dead.headers[name] for name in DEAD_LETTER_HEADERS.values()}
    assert sum(len(value) for value in added.values()) <= 4096 + 200
    assert (dead.header(DEAD_LETTER_HEADERS["error"]) or "").startswith("Order is invalid: ")
    assert caplog.records
    assert all(len(record.getMessage()) <= 3000 for record in caplog.records)


async def test_a_huge_error_message_is_cut_in_x_error_on_a_character_boundary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler error quoting a 2 MB body: x-error is valid UTF-8 of at most 4 KiB, marked cut."""
    broker = MemoryBroker(max_message_bytes=8_000_000)
    app = App(broker=broker)

    @app.subscriber("notes", retry=Retry(attempts=2, backoff=0.001))
    async def note(text: str) -> None:
        raise ValueError(f"cannot file {text}")

    async with app:
        await app.publish("notes", "é" * HUGE)
        await drained(broker)
    (dead,) = broker.messages("notes.dlq")
    error = dead.headers[DEAD_LETTER_HEADERS["error"]]
    assert len(error) <= 4096
    text = error.decode("utf-8")  # no character cut in half
    assert text.startswith("cannot file éé")
    full = len(b"cannot file ") + len("é".encode()) * HUGE
    assert text.endswith(f"... (cut; {full} bytes in all)")
    retry_line = next(r for r in caplog.records if "retrying" in r.getMessage())
    assert len(retry_line.getMessage()) <= 3000


def test_queries_on_the_memory_broker_create_nothing() -> None:
    """end_offsets and committed on unknown topics and groups answer zeros and create nothing."""
    broker = MemoryBroker(partitions=2, topic_partitions={"orders": 4})
    assert broker.end_offsets("orders") == [0, 0, 0, 0]
    assert broker.committed("nobody", "events") == [0, 0]
    assert broker.messages("events") == []
    assert broker.pending_by_topic() == {}
    assert broker._topics == {}
    assert broker._groups == {}


@pytest.mark.parametrize("max_concurrency", [1, 2])
async def test_a_long_batch_is_committed_as_it_goes_not_only_at_its_end(
    max_concurrency: int,
) -> None:
    """Offsets are committed every COMMIT_EVERY messages mid-batch: a crash repeats no more."""
    broker = MemoryBroker()
    app = App(broker=broker)
    seen_committed: list[int] = []
    total = COMMIT_EVERY * 3
    probe = total - COMMIT_EVERY // 2
    # commits are spaced COMMIT_SPACING apart: what a 1 ms handler gets through meanwhile
    spaced = int(COMMIT_SPACING / 0.001)

    @app.subscriber("jobs", group="workers", max_concurrency=max_concurrency)
    async def work(number: int) -> None:
        await anyio.sleep(0.001)
        if number == probe:
            (committed,) = broker.committed("workers", "jobs")
            seen_committed.append(committed)

    for number in range(total):
        await broker.send("jobs", str(number).encode())  # queued before the app starts
    async with app:
        await drained(broker)
    assert seen_committed
    assert seen_committed[0] >= probe - COMMIT_EVERY - spaced
    assert broker.committed("workers", "jobs") == [total]
