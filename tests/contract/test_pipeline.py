"""The delivery contract on any transport: commits wait for acknowledgements; refusals stop.

Each test wraps the transport in a test broker (tests/resources.py) that acknowledges sends
late or refuses them, and runs in both concurrency modes: ``max_concurrency=1`` (a batch in
order, then one commit) and above 1 (a worker per partition, each committing what it did).
"""

from __future__ import annotations

import anyio
import pytest

from di_lifespan import (
    App,
    Broker,
    FromDishka,
    Message,
    Outgoing,
    Publisher,
    Retry,
    ShutdownError,
)
from tests.resources import CAUSE, LateAcks, RecordingBroker, Refusing

INPUTS = 12
KEYS = 4
CONCURRENCY = pytest.mark.parametrize("max_concurrency", [1, 3], ids=["in-order", "concurrent"])
FAST = Retry(attempts=2, backoff=0.001)


def causing_app(broker: RecordingBroker, topic: str, max_concurrency: int) -> App:
    """An app whose handler causes two messages per input: one published, one returned."""
    app = App(broker=broker)

    @app.subscriber(topic, group="pipeline", max_concurrency=max_concurrency, retry=FAST)
    @app.publisher(f"{topic}.out")
    async def handle(number: int, message: Message, publisher: FromDishka[Publisher]) -> Outgoing:
        cause = {CAUSE: message.coordinates}
        await publisher.publish(f"{topic}.side", number, key=message.key, headers=cause)
        return Outgoing(number, key=message.key, headers=cause)

    return app


async def publish_inputs(app: App, topic: str) -> None:
    """Publish INPUTS numbers spread over KEYS keys (so over the partitions)."""
    for number in range(INPUTS):
        await app.publish(topic, number, key=f"key-{number % KEYS}")


@CONCURRENCY
async def test_an_input_is_committed_only_after_every_message_it_caused_is_acknowledged(
    unstarted_broker: Broker, topic: str, max_concurrency: int
) -> None:
    """With acks held back and released newest first, no commit comes before its acks.

    Step by step the newest unacknowledged message is acknowledged; every commit is checked,
    when it happens, against the acknowledgements so far.
    """
    broker = LateAcks(unstarted_broker)
    app = causing_app(broker, topic, max_concurrency)
    with anyio.fail_after(30):
        async with app:
            with broker.released_at_exit():
                await publish_inputs(app, topic)
                while True:
                    for _ in range(10):  # let the app run until it waits (on asyncio, at least)
                        await anyio.lowlevel.checkpoint()
                    if broker.committed_count(topic) == INPUTS:
                        break
                    if waiting := broker.unacknowledged():
                        assert broker.committed_count(topic) < INPUTS
                        broker.release(waiting[-1])
                    else:  # the app works on: the next send it makes or commit wakes us
                        await broker.wait_for_change()
    assert broker.violations == []
    assert len(broker.caused) == 2 * INPUTS
    assert all(caused.acknowledged for caused in broker.caused)


@CONCURRENCY
async def test_nothing_is_committed_while_an_acknowledgement_is_outstanding(
    unstarted_broker: Broker, topic: str, max_concurrency: int
) -> None:
    """While one caused message stays unacknowledged, its input's partition stays uncommitted."""
    broker = LateAcks(unstarted_broker)
    app = causing_app(broker, topic, max_concurrency)
    with anyio.fail_after(30):
        async with app:
            with broker.released_at_exit():
                await app.publish(topic, 0, key="only")
                while len(broker.caused) < 2:
                    await broker.wait_for_change()
                first, second = broker.caused
                broker.release(second)
                await anyio.wait_all_tasks_blocked()
                assert broker.committed_count(topic) == 0
                broker.release(first)
                while broker.committed_count(topic) < 1:
                    await broker.wait_for_change()
    assert broker.violations == []


@CONCURRENCY
async def test_a_refused_result_is_retried_then_dead_lettered_and_then_committed(
    unstarted_broker: Broker, topic: str, max_concurrency: int
) -> None:
    """A send that raises fails the attempt: retried, dead-lettered, then the input committed.

    The refused message is never stored; the dead letter names the refusal.
    """
    broker = Refusing(unstarted_broker, {f"{topic}.out"})
    app = causing_app(broker, topic, max_concurrency)
    with anyio.fail_after(30):
        async with app:
            await app.publish(topic, 7, key="k")
            while broker.committed_count(topic) < 1:
                await broker.wait_for_change()
    assert broker.refused == [f"{topic}.out"] * FAST.attempts
    dead = await read_all(unstarted_broker, f"{topic}.dlq", 1)
    assert dead[0].header("x-error-type") == "ConnectionError"
    assert dead[0].header("x-error") == f"broker refused a message to {topic}.out"
    assert await read_all(unstarted_broker, f"{topic}.out", 0) == []


@CONCURRENCY
async def test_a_refused_acknowledgement_stops_the_subscriber_uncommitted(
    unstarted_broker: Broker, topic: str, max_concurrency: int
) -> None:
    """A Delivery that fails stops the subscriber; the input stays uncommitted.

    The app's exit raises ShutdownError naming the subscriber and the refusal (today the
    crash also cancels the body of ``async with app``).
    """
    broker = Refusing(unstarted_broker, {f"{topic}.out"}, when="ack")
    app = causing_app(broker, topic, max_concurrency)
    with anyio.fail_after(30), pytest.raises(ShutdownError) as caught:  # noqa: PT012  # the whole run is under test
        async with app:
            await app.publish(topic, 7, key="k")
            await anyio.sleep_forever()
    (failure,) = caught.value.exceptions
    assert failure.step.startswith("subscriber ")
    assert failure.step.endswith("causing_app.<locals>.handle")
    assert broker.committed_count(topic) == 0
    assert broker.refused == [f"{topic}.out"]
    assert failure.reason == f"ConnectionError: broker refused a message to {topic}.out"


@CONCURRENCY
async def test_a_refused_dead_letter_stops_the_subscriber_uncommitted(
    unstarted_broker: Broker, topic: str, max_concurrency: int
) -> None:
    """When the result and then its dead letter are refused, the subscriber stops, uncommitted."""
    broker = Refusing(unstarted_broker, {f"{topic}.out", f"{topic}.dlq"})
    app = causing_app(broker, topic, max_concurrency)
    with anyio.fail_after(30), pytest.raises(ShutdownError) as caught:  # noqa: PT012  # the whole run is under test
        async with app:
            await app.publish(topic, 7, key="k")
            await anyio.sleep_forever()
    (failure,) = caught.value.exceptions
    assert failure.step.endswith("causing_app.<locals>.handle")
    assert broker.committed_count(topic) == 0
    assert failure.reason == f"ConnectionError: broker refused a message to {topic}.dlq"


async def read_all(broker: Broker, topic: str, count: int) -> list[Message]:
    """Read ``count`` messages of ``topic`` from its start with a fresh group, then leave."""
    from di_lifespan import Subscription

    from .test_transport import Owned

    consumer = await broker.subscribe(Subscription((topic,), "reader", "reader"), Owned())
    messages: list[Message] = []
    with anyio.fail_after(10):
        while len(messages) < count:
            messages.extend(await consumer.fetch(count - len(messages)))
    await consumer.close()
    return messages


async def test_results_of_mixed_sizes_keep_their_order_within_a_partition(
    unstarted_broker: Broker, topic: str
) -> None:
    """Large results (sent alone) come out in order with small ones (sent in batches)."""
    app = App(broker=unstarted_broker)
    seen: list[int] = []
    done = anyio.Event()

    @app.subscriber(topic, group="sizes")
    @app.publisher(f"{topic}.out")
    async def pad(number: int) -> dict[str, object]:
        return {"n": number, "pad": "p" * (100_000 if number % 5 == 3 else 10)}

    @app.subscriber(f"{topic}.out", group="sink")
    async def sink(body: dict[str, object]) -> None:
        seen.append(int(str(body["n"])))
        if len(seen) == 20:
            done.set()

    with anyio.fail_after(60):
        async with app:
            for number in range(20):
                await app.publish(topic, number, key="same")
            await done.wait()
    assert seen == list(range(20))


async def test_a_dead_letter_too_large_goes_again_with_its_error_header_cut_short(
    unstarted_broker: Broker, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An input near the size limit whose dead letter is too large: sent again, x-error cut."""
    app = App(broker=unstarted_broker)
    handled: list[int] = []
    dead: list[Message] = []
    next_handled, dead_letter_seen = anyio.Event(), anyio.Event()

    @app.subscriber(topic, group="near-limit", retry=None)
    async def fail_big(body: bytes, message: Message) -> None:
        if len(body) > 1_000:
            raise ValueError("e" * 10_000)  # x-error (4 KiB) pushes the dead letter over
        handled.append(message.offset)
        next_handled.set()

    @app.subscriber(f"{topic}.dlq", group="near-limit-dlq")
    async def inspect(message: Message) -> None:
        dead.append(message)
        dead_letter_seen.set()

    with anyio.fail_after(60):
        async with app:
            await app.publish(topic, b"b" * (1_048_576 - 800), key="same")
            await app.publish(topic, b"next", key="same")
            await dead_letter_seen.wait()
            await next_handled.wait()
    assert handled == [1]
    (letter,) = dead
    assert len(letter.value) == 1_048_576 - 800
    assert len(letter.headers["x-error"]) <= 256
    assert letter.header("x-error-type") == "ValueError"
    assert "sending it again with x-error cut to 256 bytes" in caplog.text
    # one failure, one ERROR line, whether the first try was refused when sent or when acked
    sent_lines = [r for r in caplog.records if "; sent to " in r.getMessage()]
    assert [r.levelname for r in sent_lines] == ["ERROR"]


async def test_a_dead_letter_that_cannot_fit_drops_the_message_and_goes_on(
    unstarted_broker: Broker, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An input at the size limit: its dead letter cannot fit even cut short; dropped, go on."""
    app = App(broker=unstarted_broker)
    handled: list[int] = []
    done = anyio.Event()

    @app.subscriber(topic, group="at-limit", retry=None)
    async def fail_big(body: bytes, message: Message) -> None:
        if len(body) > 1_000:
            raise ValueError("e" * 10_000)  # even cut to 256 bytes, x-error does not fit
        handled.append(message.offset)
        done.set()

    with anyio.fail_after(60):
        async with app:
            await app.publish(topic, b"b" * (1_048_576 - 200), key="same")
            await app.publish(topic, b"next", key="same")
            await done.wait()
    assert handled == [1]
    assert "dropped: its dead letter was refused" in caplog.text
