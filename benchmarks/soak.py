"""Soak: a million messages through one service, its throughput and memory watched.

The pipeline is the Kafka throughput benchmark's: read ``Reading`` JSON from ``input``, validate
it with pydantic, double its value, write the result as JSON to ``output``, commit the input
offsets; one di_lifespan subscriber (``max_concurrency`` = the partition count) stacked on
``@app.publisher``.

On Kafka (the default) a fresh embedded (Tansu) broker gets the input topic preloaded by
confluent-kafka before the service starts (or, with ``--rate``, fed at a steady rate by a
producer process while the service runs); the service runs in a process of its own, and the
resident memory measured is that process's alone (Tansu keeps every record in memory: its
growth is not ours). Once the service has handled every input it is stopped gracefully, and
every output is read back and counted by id, and the group's committed offsets summed.

With ``--memory`` the same app runs in this process on ``MemoryBroker(partitions=P,
retention=R)``; a task of the same process publishes the inputs, never more than a window
ahead of the end of the pipeline, and a second subscriber (group ``sink``) counts the outputs
by id, as the Kafka run's read-back does, while retention trims both topics.

The service samples its own clock and resident memory (``/proc/self/statm``) after startup and
each time it has handled another ``--slice`` messages, at the middle and at the end.

Run: ``python benchmarks/soak.py`` (needs the ``embedded`` and ``bench`` extras; a few minutes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import anyio
import anyio.to_thread
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel

from di_lifespan import App, MemoryBroker
from di_lifespan.kafka import EmbeddedKafka, KafkaBroker

try:
    import confluent_kafka
except ImportError as missing:  # pragma: no cover - depends on the bench extra
    raise SystemExit(
        f"this benchmark needs the bench extra: pip install -e '.[embedded,bench]' ({missing})"
    ) from None

INPUT = "input"
OUTPUT = "output"
GROUP = "soak"
SESSION_TIMEOUT_MS = 2_000  # Tansu holds a group's first join for half of it
STOP_SECONDS = 60.0  # the service's graceful stop
DRAIN_SECONDS = 2.0  # reading every output back: no more within this long
MEMORY_WINDOW = 10_000  # --memory: inputs published ahead of the sink, at most
FLAT = 0.20  # memory is flat when the end is within 20% of the middle
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024


class Reading(BaseModel):
    id: int
    value: float


class Doubled(BaseModel):
    id: int
    value: float


def resident() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE


def peak_resident() -> int:
    """This process's highest resident memory so far (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class Sample:
    """What the service reports: ``handled`` messages so far at ``at`` (monotonic), its RSS."""

    handled: int
    at: float
    rss: int


class Meter:
    """The handler: counts what it handles and samples the clock and memory at the marks."""

    def __init__(self, messages: int, slice_size: int, report: Queue[Sample] | None) -> None:
        self.handled = 0
        self.samples: list[Sample] = []
        marks = {1, messages // 2, messages, *range(slice_size, messages + 1, slice_size)}
        self._marks = sorted(mark for mark in marks if mark > 0)
        self._next = 0
        self._report = report

    def sample(self) -> None:
        sample = Sample(self.handled, time.monotonic(), resident())
        self.samples.append(sample)
        if self._report is not None:
            self._report.put(sample)

    def handle(self, reading: Reading) -> Doubled:
        self.handled += 1
        if self._next < len(self._marks) and self.handled == self._marks[self._next]:
            self._next += 1
            self.sample()
        return Doubled(id=reading.id, value=reading.value * 2)


def soak_app(broker: KafkaBroker | MemoryBroker, partitions: int, meter: Meter) -> App:
    app = App(broker=broker)

    @app.after_startup
    def started() -> None:
        meter.sample()  # handled = 0: the memory after startup

    @app.subscriber(INPUT, group=GROUP, max_concurrency=partitions)
    @app.publisher(OUTPUT)
    async def double(reading: Reading) -> Doubled:
        return meter.handle(reading)

    return app


# --- on Kafka: the service's process, the producer, the read-back ----------------------------


@dataclass(frozen=True)
class Setup:
    bootstrap: str
    partitions: int
    messages: int
    slice_size: int
    log: str


def run_service(setup: Setup, report: Queue[Sample], stop: Event) -> None:
    """The service's process: runs until ``stop``, then reports its memory after the stop."""
    sink = os.open(setup.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    meter = Meter(setup.messages, setup.slice_size, report)
    broker = KafkaBroker(setup.bootstrap, idempotent=False, session_timeout_ms=SESSION_TIMEOUT_MS)
    app = soak_app(broker, setup.partitions, meter)

    async def main() -> None:
        async with app:
            await anyio.to_thread.run_sync(stop.wait, abandon_on_cancel=True)
        report.put(Sample(-1, time.monotonic(), resident()))  # -1: after the stop
        report.put(Sample(-2, time.monotonic(), peak_resident()))  # -2: the peak

    anyio.run(main)


async def create_topics(bootstrap: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in (INPUT, OUTPUT)])
    finally:
        await admin.close()


def produce(bootstrap: str, partitions: int, messages: int, rate: float) -> None:
    """The inputs, spread evenly over the partitions; at ``rate`` a second, or at once if 0."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000}
    )
    started = time.monotonic()
    for index in range(messages):
        if rate and index % 100 == 0:
            ahead = index / rate - (time.monotonic() - started)
            if ahead > 0:
                producer.poll(ahead)
        body = json.dumps({"id": index, "value": index * 0.5}).encode()
        while True:
            try:
                producer.produce(INPUT, body, partition=index % partitions)
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("the input was not all written")


@dataclass
class Outputs:
    total: int = 0
    distinct: int = 0
    wrong: int = 0
    missing: int = 0
    committed: int = 0


class Sink:
    """--memory: counts the outputs by id as they come; the publisher waits on its total."""

    def __init__(self, messages: int) -> None:
        self.outputs = Outputs()
        self.seen = bytearray(messages)
        self._waiting: tuple[int, anyio.Event] | None = None

    def add(self, result: dict[str, float]) -> None:
        count_ids(self.seen, self.outputs, result)
        if self._waiting is not None and self.outputs.total >= self._waiting[0]:
            self._waiting[1].set()
            self._waiting = None

    async def reached(self, total: int) -> None:
        if self.outputs.total < total:
            event = anyio.Event()
            self._waiting = (total, event)
            await event.wait()


def count_ids(seen: bytearray, outputs: Outputs, result: dict[str, float]) -> None:
    """Count one output by its id (the value must be the input's, doubled)."""
    index = int(result["id"])
    outputs.total += 1
    if 0 <= index < len(seen):
        if not seen[index]:
            outputs.distinct += 1
        seen[index] = 1
    if result["value"] != index:  # the input's value is id / 2
        outputs.wrong += 1


def read_back(bootstrap: str, partitions: int, messages: int) -> Outputs:
    """Every output read from the start and counted by id; the group's committed offsets."""
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": GROUP, "enable.auto.commit": False}
    )
    outputs = Outputs()
    seen = bytearray(messages)
    try:
        offsets = consumer.committed(
            [confluent_kafka.TopicPartition(INPUT, p) for p in range(partitions)], timeout=30
        )
        outputs.committed = sum(max(offset.offset, 0) for offset in offsets)
        consumer.assign(
            [
                confluent_kafka.TopicPartition(OUTPUT, p, confluent_kafka.OFFSET_BEGINNING)
                for p in range(partitions)
            ]
        )
        while records := consumer.consume(num_messages=10_000, timeout=DRAIN_SECONDS):
            for record in records:
                if record.error() is None:
                    count_ids(seen, outputs, json.loads(record.value() or b""))
    finally:
        consumer.close()
    outputs.missing = messages - outputs.distinct
    return outputs


@dataclass
class Run:
    """One soak's figures."""

    messages: int
    samples: list[Sample] = field(default_factory=list)
    after_stop: int | None = None
    peak: int | None = None
    stop_seconds: float | None = None
    outputs: Outputs | None = None
    problems: list[str] = field(default_factory=list)


def soak_kafka(arguments: argparse.Namespace) -> Run:
    run = Run(arguments.messages)
    context: SpawnContext = multiprocessing.get_context("spawn")
    with EmbeddedKafka() as kafka, tempfile.TemporaryDirectory() as logs:
        bootstrap = kafka.bootstrap_servers
        anyio.run(create_topics, bootstrap, arguments.partitions)
        producer = None
        if not arguments.rate:
            began = time.monotonic()
            produce(bootstrap, arguments.partitions, arguments.messages, 0)
            print(
                f"{arguments.messages:,} inputs preloaded in {time.monotonic() - began:.1f} s",
                file=sys.stderr,
            )
        report: Queue[Sample] = context.Queue()
        stop = context.Event()
        log = str(Path(logs, "service.log"))
        setup = Setup(bootstrap, arguments.partitions, arguments.messages, arguments.slice, log)
        service = context.Process(target=run_service, args=(setup, report, stop))
        service.start()
        if arguments.rate:
            producer = context.Process(
                target=produce,
                args=(bootstrap, arguments.partitions, arguments.messages, arguments.rate),
            )
            producer.start()
        collect(run, report, service.is_alive, arguments.timeout)
        stopping = time.monotonic()
        stop.set()
        service.join(STOP_SECONDS)
        if service.is_alive():
            run.problems.append(f"no stop within {STOP_SECONDS:g} s")
            service.kill()
            service.join()
        elif service.exitcode:
            run.problems.append(f"the service exited with {service.exitcode}")
        else:
            run.stop_seconds = time.monotonic() - stopping
            for sample in drain(report):
                if sample.handled == -1:
                    run.after_stop = sample.rss
                elif sample.handled == -2:  # the peak's marker
                    run.peak = sample.rss
        if producer is not None:
            producer.join(STOP_SECONDS)
        run.outputs = read_back(bootstrap, arguments.partitions, arguments.messages)
        if run.problems:
            tail = Path(log).read_text(errors="replace").splitlines()[-15:]
            print("\n".join(f"    {line}" for line in tail), file=sys.stderr)
    return run


def collect(run: Run, report: Queue[Sample], alive: Callable[[], bool], timeout: float) -> None:
    """Take the service's samples until it has handled every input (or died, or time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            sample = report.get(timeout=0.5)
        except queue.Empty:
            continue
        run.samples.append(sample)
        progress(sample, run.messages)
        if sample.handled >= run.messages:
            return
    run.problems.append(f"handled {handled(run):,} of {run.messages:,}")


def drain(report: Queue[Sample]) -> list[Sample]:
    samples = []
    while True:
        try:
            samples.append(report.get(timeout=5))
        except queue.Empty:
            return samples


def handled(run: Run) -> int:
    return max((sample.handled for sample in run.samples), default=0)


def progress(sample: Sample, messages: int) -> None:
    if sample.handled > 1:
        print(
            f"  {sample.handled:>11,} of {messages:,}, RSS {sample.rss / MIB:.1f} MiB",
            file=sys.stderr,
        )


# --- in memory: one process -------------------------------------------------------------------


def soak_memory(arguments: argparse.Namespace) -> Run:
    run = Run(arguments.messages)
    retention = arguments.retention or None
    broker = MemoryBroker(partitions=arguments.partitions, retention=retention)
    meter = Meter(arguments.messages, arguments.slice, None)
    app = soak_app(broker, arguments.partitions, meter)
    sink = Sink(arguments.messages)
    outputs = sink.outputs
    # Never further ahead of the sink than half of what the partitions keep: nothing is
    # dropped before it is read.
    window = min(MEMORY_WINDOW, (retention or MEMORY_WINDOW) * arguments.partitions // 2)

    @app.subscriber(OUTPUT, group="sink", max_concurrency=arguments.partitions)
    async def count(result: dict[str, float]) -> None:
        sink.add(result)

    async def main() -> None:
        async with app:
            for index in range(arguments.messages):
                if index - outputs.total >= window:
                    await sink.reached(index - window // 2)
                body = json.dumps({"id": index, "value": index * 0.5}).encode()
                await app.publish(INPUT, body)
            with anyio.move_on_after(arguments.timeout):
                await sink.reached(arguments.messages)
            stopping = time.monotonic()
        run.stop_seconds = time.monotonic() - stopping
        run.after_stop = resident()
        run.peak = peak_resident()

    anyio.run(main)
    run.samples = meter.samples
    outputs.missing = arguments.messages - outputs.distinct
    outputs.committed = sum(broker.committed(GROUP, INPUT))
    run.outputs = outputs
    if meter.handled < arguments.messages:
        run.problems.append(f"handled {meter.handled:,} of {arguments.messages:,}")
    return run


# --- the report -----------------------------------------------------------------------------


def rss_at(run: Run, handled: int) -> int | None:
    return next((s.rss for s in run.samples if s.handled == handled), None)


def print_report(run: Run, arguments: argparse.Namespace) -> bool:
    """The table and the verdicts; True when every input had its output and memory is flat."""
    if arguments.memory:
        retention = f"{arguments.retention:,}" if arguments.retention else "None"
        where = f"memory:// in this process, MemoryBroker(retention={retention})"
    else:
        feed = f"fed at {arguments.rate:,.0f} msg/s" if arguments.rate else "preloaded"
        where = f"embedded Tansu broker, service in its own process, inputs {feed}"
    print(
        f"soak: {run.messages:,} messages, {arguments.partitions} partitions, {where};"
        " consume -> validate (pydantic) -> handle -> produce JSON -> commit"
    )
    print(f"{'handled':>11}{'seconds':>10}{'slice msg/s':>13}{'RSS MiB':>10}")
    first = next((s for s in run.samples if s.handled == 1), None)
    previous = first
    for sample in run.samples:
        if sample.handled == 0:
            print(f"{'start':>11}{'-':>10}{'-':>13}{sample.rss / MIB:>10.1f}  after startup")
            continue
        if sample.handled == 1 or first is None or previous is None:
            continue
        seconds = sample.at - first.at
        rate = (sample.handled - previous.handled) / max(sample.at - previous.at, 1e-9)
        print(f"{sample.handled:>11,}{seconds:>10.2f}{rate:>13,.0f}{sample.rss / MIB:>10.1f}")
        previous = sample
    last = run.samples[-1] if run.samples else None
    if first is not None and last is not None and last.handled > 1:
        seconds = last.at - first.at
        print(
            f"overall: {last.handled - 1:,} messages after the first in {seconds:.2f} s,"
            f" {(last.handled - 1) / max(seconds, 1e-9):,.0f} msg/s"
            + (f"; graceful stop {run.stop_seconds:.2f} s" if run.stop_seconds else "")
        )
    start, middle, end = rss_at(run, 0), rss_at(run, run.messages // 2), rss_at(run, run.messages)
    flat = False
    if start is not None and middle is not None and end is not None:
        change = (end - middle) / middle
        flat = abs(change) <= FLAT
        extra = "".join(
            f", {name} {value / MIB:.1f} MiB"
            for name, value in (("after the stop", run.after_stop), ("peak", run.peak))
            if value
        )
        print(
            f"resident memory: start {start / MIB:.1f} MiB, middle {middle / MIB:.1f} MiB,"
            f" end {end / MIB:.1f} MiB ({change:+.1%} on the middle){extra}"
        )
    print(f"memory flat: end within 20% of middle: {'yes' if flat else 'no'}")
    outputs = run.outputs
    complete = False
    if outputs is not None:
        complete = outputs.missing == 0 and outputs.wrong == 0 and outputs.committed == run.messages
        print(
            f"outputs: {outputs.total:,} read, {outputs.distinct:,} distinct ids,"
            f" {outputs.missing:,} missing, {outputs.total - outputs.distinct:,} duplicates,"
            f" {outputs.wrong:,} wrong; committed {outputs.committed:,} of {run.messages:,}"
            f" -> every input has its output: {'yes' if complete else 'NO'}"
        )
    for problem in run.problems:
        print(f"problem: {problem}")
    return flat and complete and not run.problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="inputs (1,000,000)")
    parser.add_argument("--partitions", type=int, default=4, help="of each topic (4)")
    parser.add_argument("--slice", type=int, default=100_000, help="messages a row (100,000)")
    parser.add_argument(
        "--memory", action="store_true", help="run on memory:// in this process instead"
    )
    parser.add_argument(
        "--retention",
        type=int,
        default=10_000,
        help="--memory: messages a partition keeps (10,000; 0 keeps every one)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="Kafka: feed the inputs at this many a second while the service runs"
        " (default 0: preload them before it starts)",
    )
    parser.add_argument(
        "--timeout", type=float, default=1_800.0, help="seconds the run may take (1,800)"
    )
    arguments = parser.parse_args()
    if arguments.messages < 2 or arguments.slice < 1 or arguments.partitions < 1:
        parser.error("--messages must be at least 2, --slice and --partitions at least 1")
    run = soak_memory(arguments) if arguments.memory else soak_kafka(arguments)
    if not print_report(run, arguments):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
