"""Delivered rate under overload: I/O-bound handlers on 64 partitions, producers at 1.2x capacity.

A subscriber with ``max_concurrency`` C whose handler only awaits ``anyio.sleep`` (20 ms by
default: a 5 ms sleep among many timers wakes about a millisecond late, so that even the ideal
loop falls 10-20% short of the nominal capacity) can handle at most C / handler_seconds
messages a second: its capacity. Producers publish at 1.2x that, spread round-robin over the
topic's 64 partitions, at a steady paced rate; the handled messages are counted over a
steady window that starts a warm-up after the first message was handled. Cases, for each C:

- ideal: a hand-written anyio loop, the same paced producer feeding C workers through one
  memory object stream: what this event loop reaches at all;
- memory: the app on ``MemoryBroker(partitions=64)``, the producer a task of the same process;
- kafka: the app on a fresh embedded (Tansu) broker through ``KafkaBroker``, the topic created
  with 64 partitions beforehand, the producer an aiokafka producer in a child process (as
  producers are other services; a shared counter tells this process how much it sent).

Printed per case, best of the rounds: offered and delivered rates over the window, the
delivered rate in its first and last second (whether it holds as the backlog grows), delivered
as a share of capacity and of the ideal, this process's CPU use over the window, and the
target (>= 90% of capacity) met or missed.
Run: ``python benchmarks/overload.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.sharedctypes
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from di_lifespan import App, MemoryBroker
from di_lifespan.kafka import EmbeddedKafka, KafkaBroker

TOPIC = "work"
GROUP = "overload"
PARTITIONS = 64
VALUE = b'{"job": "overload"}'
TICK = 0.005  # seconds between the paced producer's bursts
TARGET = 0.9  # of capacity
CASES = ("ideal", "memory", "kafka")

Send = Callable[[int], Awaitable[None]]


@dataclass
class Counter:
    """Messages counted so far, and an event set at the first one."""

    count: int = 0
    first: anyio.Event = field(default_factory=anyio.Event)

    def add(self) -> None:
        self.count += 1
        if self.count == 1:
            self.first.set()


@dataclass(frozen=True)
class Settings:
    handler_seconds: float
    seconds: float
    warmup: float
    load: float


@dataclass(frozen=True)
class Row:
    case: str
    concurrency: int
    capacity: float
    offered: float
    delivered: float
    first_second: float
    last_second: float
    cpu: float


async def pace(rate: float, send: Send, sent: Counter) -> None:
    """Call ``send`` ``rate`` times a second, in small bursts, catching up when behind."""
    began = time.perf_counter()
    while True:
        due = int((time.perf_counter() - began) * rate)
        while sent.count < due:
            await send(sent.count)
            sent.add()
        await anyio.sleep(TICK)


async def measure(
    case: str,
    concurrency: int,
    settings: Settings,
    handled: Counter,
    sent: Callable[[], int],
) -> Row:
    """Wait for the first handled message and the warm-up, then count over the window.

    The handled count is also read each second of the window: its first and last seconds
    show whether the rate holds or falls as the backlog grows.
    """
    await handled.first.wait()
    await anyio.sleep(settings.warmup)
    sent_before = sent()
    cpu_before, began = time.process_time(), time.perf_counter()
    marks = [(began, handled.count)]
    while (now := time.perf_counter()) < began + settings.seconds:
        await anyio.sleep(min(1.0, began + settings.seconds - now))
        marks.append((time.perf_counter(), handled.count))
    elapsed = marks[-1][0] - began
    cpu = (time.process_time() - cpu_before) / elapsed
    return Row(
        case,
        concurrency,
        concurrency / settings.handler_seconds,
        (sent() - sent_before) / elapsed,
        (marks[-1][1] - marks[0][1]) / elapsed,
        _rate(marks[0], marks[1]),
        _rate(marks[-2], marks[-1]),
        cpu,
    )


def _rate(start: tuple[float, int], end: tuple[float, int]) -> float:
    return (end[1] - start[1]) / (end[0] - start[0])


# --- ideal: a hand-written anyio loop ---------------------------------------------------------


async def run_ideal(concurrency: int, settings: Settings) -> Row:
    handled, sent = Counter(), Counter()
    rate = settings.load * concurrency / settings.handler_seconds
    send_stream, receive_stream = anyio.create_memory_object_stream[int](float("inf"))

    async def worker() -> None:
        async for _ in receive_stream:
            await anyio.sleep(settings.handler_seconds)
            handled.add()

    async with anyio.create_task_group() as tasks:
        for _ in range(concurrency):
            tasks.start_soon(worker)
        tasks.start_soon(pace, rate, send_stream.send, sent)
        row = await measure("ideal", concurrency, settings, handled, lambda: sent.count)
        tasks.cancel_scope.cancel()
    return row


# --- di_lifespan on the memory broker ---------------------------------------------------------


def overload_app(concurrency: int, settings: Settings, handled: Counter) -> App:
    app = App()

    @app.subscriber(TOPIC, group=GROUP, max_concurrency=concurrency)
    async def work(body: bytes) -> None:
        await anyio.sleep(settings.handler_seconds)
        handled.add()

    return app


async def run_memory(concurrency: int, settings: Settings) -> Row:
    handled, sent = Counter(), Counter()
    rate = settings.load * concurrency / settings.handler_seconds
    broker = MemoryBroker(partitions=PARTITIONS)
    app = overload_app(concurrency, settings, handled)

    async def send(_: int) -> None:
        await broker.send(TOPIC, VALUE)  # keyless: the next partition in turn

    async with app.lifespan(broker=broker), anyio.create_task_group() as tasks:
        tasks.start_soon(pace, rate, send, sent)
        row = await measure("memory", concurrency, settings, handled, lambda: sent.count)
        tasks.cancel_scope.cancel()
    return row


# --- di_lifespan on the embedded Kafka broker -------------------------------------------------


async def create_topic(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()


def produce_to_kafka(
    bootstrap: str,
    rate: float,
    sent: multiprocessing.sharedctypes.Synchronized[int],
    stop: multiprocessing.sharedctypes.Synchronized[bool],
) -> None:
    """The child process: send at ``rate`` round-robin over the partitions until ``stop``."""

    async def produce() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=2
        )
        await producer.start()
        counter = Counter()

        async def send(index: int) -> None:
            await producer.send(TOPIC, VALUE, partition=index % PARTITIONS)
            sent.value = index + 1  # the only writer: no lock needed

        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(pace, rate, send, counter)
                while not stop.value:  # noqa: ASYNC110  # a flag in shared memory has no event
                    await anyio.sleep(0.05)
                tasks.cancel_scope.cancel()
        finally:
            await producer.stop()

    anyio.run(produce)


async def run_kafka(concurrency: int, settings: Settings) -> Row:
    handled = Counter()
    rate = settings.load * concurrency / settings.handler_seconds
    app = overload_app(concurrency, settings, handled)
    spawn = multiprocessing.get_context("spawn")
    sent = spawn.Value("q", 0, lock=False)
    stop = spawn.Value("b", False, lock=False)  # noqa: FBT003  # a shared flag's first value
    async with EmbeddedKafka() as kafka:
        bootstrap = kafka.bootstrap_servers
        await create_topic(bootstrap)
        broker = KafkaBroker(bootstrap, idempotent=False, session_timeout_ms=2000)
        producer = spawn.Process(target=produce_to_kafka, args=(bootstrap, rate, sent, stop))
        async with app.lifespan(broker=broker):
            producer.start()
            try:
                row = await measure("kafka", concurrency, settings, handled, lambda: sent.value)
            finally:
                stop.value = True
                await anyio.to_thread.run_sync(producer.join)
    return row


RUNS: dict[str, Callable[[int, Settings], Awaitable[Row]]] = {
    "ideal": run_ideal,
    "memory": run_memory,
    "kafka": run_kafka,
}


async def main(concurrencies: list[int], cases: list[str], rounds: int, settings: Settings) -> None:
    """Run every case in alternating rounds; print the best round of each."""
    best: dict[tuple[str, int], Row] = {}
    for _ in range(rounds):
        for concurrency in concurrencies:
            for case in cases:
                row = await RUNS[case](concurrency, settings)
                kept = best.get((case, concurrency))
                if kept is None or row.delivered > kept.delivered:
                    best[(case, concurrency)] = row
    print(
        f"overload: {PARTITIONS} partitions, handler awaits {settings.handler_seconds * 1000:g} ms,"
        f" offered {settings.load:g}x capacity; {settings.seconds:g} s window after"
        f" {settings.warmup:g} s of warm-up, best of {rounds} round(s)"
    )
    print(
        f"{'case':8}{'C':>4}{'capacity':>10}{'offered':>10}{'delivered':>11}"
        f"{'1st s':>8}{'last s':>8}{'of cap.':>9}{'of ideal':>10}{'cpu':>6}  >= {TARGET:.0%}"
    )
    for (case, concurrency), row in best.items():
        share = row.delivered / row.capacity
        ideal = best.get(("ideal", concurrency))
        of_ideal = f"{row.delivered / ideal.delivered:.1%}" if ideal else "-"
        print(
            f"{case:8}{concurrency:>4}{row.capacity:>10,.0f}{row.offered:>10,.0f}"
            f"{row.delivered:>11,.0f}{row.first_second:>8,.0f}{row.last_second:>8,.0f}"
            f"{share:>9.1%}{of_ideal:>10}{row.cpu:>6.0%}  {'met' if share >= TARGET else 'MISSED'}"
        )
    print("rates in messages/s; cpu: this process's CPU time over the window (2 cores in all)")


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if unknown := set(names) - set(CASES):
        raise argparse.ArgumentTypeError(f"unknown case(s): {', '.join(sorted(unknown))}")
    return names


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handler-ms", type=float, default=20.0, help="handler ms (default 20)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="skipped seconds (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (default 3)")
    parser.add_argument("--load", type=float, default=1.2, help="offered / capacity (default 1.2)")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[8, 64],
        help="max_concurrency values (default 8,64)",
    )
    parser.add_argument(
        "--only", type=_names, default=list(CASES), help=f"cases to run (default {','.join(CASES)})"
    )
    arguments = parser.parse_args()
    anyio.run(
        main,
        arguments.concurrency,
        arguments.only,
        arguments.rounds,
        Settings(arguments.handler_ms / 1000, arguments.seconds, arguments.warmup, arguments.load),
    )
