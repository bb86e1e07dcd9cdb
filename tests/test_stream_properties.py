"""Random keyed streams over partitions, flaky handlers, any max_concurrency: delivery holds.

Each example publishes a random stream of keyed messages to a topic of 1 to 4 partitions, all
at once, to a subscriber with a random ``max_concurrency``. The handler fails each message a
planned number of times (more than the retry policy allows: dead-lettered), pausing a random
number of times so that partitions interleave. Whatever the plan, in one run:

- each message is handled once or dead-lettered once, never both, never twice;
- the messages of one key are attempted and finished in the order they were published;
- no more handlers run at once than ``max_concurrency`` allows;
- every message ends up committed, and a run stopped midway is resumed from its commits;
- with acknowledgements that come late and in any order, no input is committed before the
  messages it caused are acknowledged (the memory broker wrapped in tests.resources.LateAcks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from random import Random

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from di_lifespan import DEAD_LETTER_HEADERS, App, MemoryBroker, Message, Outgoing, Retry
from di_lifespan.testing import TestClient
from tests.resources import CAUSE, LateAcks

ATTEMPTS = 3
TOPIC = "stream"
GROUP = "workers"


@dataclass(frozen=True)
class Stream:
    """What one example publishes, and how the handler treats each message."""

    partitions: int
    max_concurrency: int
    keys: tuple[int, ...]  # per message, in publishing order
    failures: tuple[int, ...]  # per message: attempts that fail before one succeeds
    pauses: tuple[int, ...]  # per message: checkpoints inside each attempt


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    """Up to 24 messages over up to 5 keys; some fail now and then, some every time."""
    count = draw(st.integers(1, 24))
    per_message = st.lists(st.integers(0, 3), min_size=count, max_size=count)
    return Stream(
        partitions=draw(st.integers(1, 4)),
        max_concurrency=draw(st.integers(1, 4)),
        keys=tuple(draw(st.lists(st.integers(0, 4), min_size=count, max_size=count))),
        failures=tuple(draw(per_message.map(lambda xs: [x if x < 3 else ATTEMPTS for x in xs]))),
        pauses=tuple(draw(per_message)),
    )


@dataclass
class Record:
    """What the handler saw."""

    attempts: list[int] = field(default_factory=list)  # message numbers, attempt by attempt
    handled: list[int] = field(default_factory=list)  # message numbers, in finishing order
    running: int = 0
    most_running: int = 0


def build(stream: Stream, record: Record) -> App:
    """An app whose handler fails each message as the stream plans."""
    app = App()

    @app.subscriber(
        TOPIC,
        group=GROUP,
        retry=Retry(attempts=ATTEMPTS, backoff=0),
        max_concurrency=stream.max_concurrency,
    )
    async def handle(number: int, message: Message) -> None:
        record.attempts.append(number)
        record.running += 1
        record.most_running = max(record.most_running, record.running)
        try:
            for _ in range(stream.pauses[number]):
                await anyio.lowlevel.checkpoint()
            if message.attempt <= stream.failures[number]:
                raise RuntimeError(f"flaky {number}")
        finally:
            record.running -= 1
        record.handled.append(number)

    return app


async def run(stream: Stream) -> tuple[Record, TestClient]:
    """Publish the whole stream, then wait until every message is committed."""
    record = Record()
    client = TestClient(
        build(stream, record), partitions=stream.partitions, raise_handler_errors=False
    )
    with anyio.fail_after(20):
        async with client:
            for number, key in enumerate(stream.keys):
                await client.app.publish(TOPIC, number, key=f"key-{key}")
            await client.settle()
    return record, client


@settings(max_examples=40, deadline=None)
@given(streams())
def test_each_message_is_handled_or_dead_lettered_once(stream: Stream) -> None:
    """Handled or dead-lettered, exactly once each; attempts as planned; all committed."""
    record, client = anyio.run(run, stream)
    everything = range(len(stream.keys))
    succeeding = [n for n in everything if stream.failures[n] < ATTEMPTS]
    assert sorted(record.handled) == succeeding
    dead = client.messages(f"{TOPIC}.dlq")
    assert sorted(json.loads(message.value) for message in dead) == [
        n for n in everything if n not in succeeding
    ]
    assert all(message.header(DEAD_LETTER_HEADERS["attempts"]) == str(ATTEMPTS) for message in dead)
    for number in everything:
        assert record.attempts.count(number) == min(stream.failures[number] + 1, ATTEMPTS)
    assert client.broker.committed(GROUP, TOPIC) == client.broker.end_offsets(TOPIC)
    assert client.broker.pending() == 0


@settings(max_examples=40, deadline=None)
@given(streams())
def test_per_key_order_is_kept_and_concurrency_is_bounded(stream: Stream) -> None:
    """A key's messages are tried one after another, in publishing order; max_concurrency holds."""
    record, client = anyio.run(run, stream)
    for key in set(stream.keys):
        published = [n for n, k in enumerate(stream.keys) if k == key]
        attempts = [n for n in record.attempts if n in published]
        expected = [n for n in published for _ in range(min(stream.failures[n] + 1, ATTEMPTS))]
        assert attempts == expected  # one message at a time, all its attempts, in order
        handled = [n for n in record.handled if n in published]
        assert handled == [n for n in published if stream.failures[n] < ATTEMPTS]
    dead_by_key: dict[int, list[int]] = {}
    for message in client.messages(f"{TOPIC}.dlq"):
        number = json.loads(message.value)
        dead_by_key.setdefault(stream.keys[number], []).append(number)
    assert all(numbers == sorted(numbers) for numbers in dead_by_key.values())
    assert record.most_running <= min(stream.max_concurrency, stream.partitions)


def acknowledging_app(stream: Stream, broker: LateAcks) -> App:
    """An app whose handler, flaky as planned, publishes one message per input it handles."""
    app = App(broker=broker, graceful_timeout=1)  # a failed example's held acks stop it quickly

    @app.subscriber(
        TOPIC,
        group=GROUP,
        retry=Retry(attempts=ATTEMPTS, backoff=0),
        max_concurrency=stream.max_concurrency,
    )
    @app.publisher(f"{TOPIC}.out")
    async def handle(number: int, message: Message) -> Outgoing:
        for _ in range(stream.pauses[number]):
            await anyio.lowlevel.checkpoint()
        if message.attempt <= stream.failures[number]:
            raise RuntimeError(f"flaky {number}")
        return Outgoing(number, key=message.key, headers={CAUSE: message.coordinates})

    return app


async def run_with_late_acks(stream: Stream, choose: Random) -> LateAcks:
    """Publish the stream; now and then acknowledge one held message, chosen at random."""
    broker = LateAcks(MemoryBroker(partitions=stream.partitions))
    app = acknowledging_app(stream, broker)
    with anyio.fail_after(20):
        async with app:
            with broker.released_at_exit():
                for number, key in enumerate(stream.keys):
                    await app.publish(TOPIC, number, key=f"key-{key}")
                while True:
                    for _ in range(choose.randint(0, 3)):  # let the app run a little, or not
                        await anyio.lowlevel.checkpoint()
                    if broker.committed_count(TOPIC) == len(stream.keys):
                        break
                    if waiting := broker.unacknowledged():
                        broker.release(choose.choice(waiting))
                    else:  # the app works on: the next send it makes or commit wakes us
                        await broker.wait_for_change()
    return broker


@settings(max_examples=30, deadline=None)
@given(streams(), st.integers(0, 2**32))
def test_with_acks_in_any_order_nothing_is_committed_before_what_it_caused(
    stream: Stream, seed: int
) -> None:
    """Acks released in a random order: every commit follows the acks of what its inputs caused.

    Every input ends committed, each handled one with its output acknowledged.
    """
    broker = anyio.run(run_with_late_acks, stream, Random(seed))  # noqa: S311  # a test's choices
    assert broker.violations == []
    outputs = sorted(json.loads(caused.value) for caused in broker.caused)
    assert outputs == [n for n in range(len(stream.keys)) if stream.failures[n] < ATTEMPTS]
    assert all(caused.acknowledged for caused in broker.caused)


@dataclass
class Handled:
    """A message one run finished (handled, or dead-lettered after its last attempt)."""

    run: int
    number: int
    partition: int
    offset: int


async def stop_and_restart(
    stream: Stream, stop_after: int
) -> tuple[list[Handled], list[int], MemoryBroker]:
    """Run until ``stop_after`` messages are handled, stop, then run again to the end.

    Returns what each run handled, the offsets committed when the first run stopped, and the
    broker. Each message succeeds at its last attempt at the latest: nothing is dead-lettered.
    """
    broker = MemoryBroker(partitions=stream.partitions)
    finished: list[Handled] = []
    enough = anyio.Event()
    run = 0
    app = App(broker=broker)

    @app.subscriber(
        TOPIC,
        group=GROUP,
        retry=Retry(attempts=ATTEMPTS, backoff=0),
        dead_letter=None,
        max_concurrency=stream.max_concurrency,
    )
    async def handle(number: int, message: Message) -> None:
        for _ in range(stream.pauses[number]):
            await anyio.lowlevel.checkpoint()
        last = message.attempt == ATTEMPTS
        if message.attempt <= stream.failures[number] and not last:
            raise RuntimeError(f"flaky {number}")
        finished.append(Handled(run, number, message.partition, message.offset))
        if len(finished) >= stop_after:
            enough.set()

    with anyio.fail_after(20):
        async with app:
            for number, key in enumerate(stream.keys):
                await app.publish(TOPIC, number, key=f"key-{key}")
            await enough.wait()
        committed = broker.committed(GROUP, TOPIC)
        run = 1
        async with app:
            while broker.pending():
                await broker.wait_for_change()
    return finished, committed, broker


@settings(max_examples=30, deadline=None)
@given(streams(), st.integers(1, 24))
def test_a_stopped_run_is_resumed_from_its_commits(stream: Stream, stop_after: int) -> None:
    """Stop mid-stream, start again: the second run handles exactly what was not committed.

    Everything committed was handled before; no run handles a message twice; each run keeps
    per-key order; in the end every message is handled and committed.
    """
    stop_after = min(stop_after, len(stream.keys))
    finished, committed, broker = anyio.run(stop_and_restart, stream, stop_after)
    ends = broker.end_offsets(TOPIC)
    read: dict[int, set[tuple[int, int]]] = {}
    for run in (0, 1):
        mine = [item for item in finished if item.run == run]
        read[run] = {(item.partition, item.offset) for item in mine}
        assert len(read[run]) == len(mine), "a run handled a message twice"
        for key in set(stream.keys):
            numbers = [item.number for item in mine if stream.keys[item.number] == key]
            assert numbers == sorted(numbers)
    for partition, end in enumerate(ends):
        done_before = {(partition, offset) for offset in range(committed[partition])}
        assert done_before <= read[0]  # committed only once handled
        assert {item for item in read[1] if item[0] == partition} == {
            (partition, offset) for offset in range(committed[partition], end)
        }
    assert {item.number for item in finished} == set(range(len(stream.keys)))
    assert broker.committed(GROUP, TOPIC) == ends
