"""Delivery on a Kafka-protocol broker, seen from outside: crashes, deploys, bad input, scaling.

The service (tests/apps/kafka_service.py) runs in child processes; an external client
(confluent-kafka, i.e. librdkafka) produces its inputs and reads its outputs from the beginning
of the output topic, counting ids (the embedded broker's end offsets cannot say when a topic
has been read to its end).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka import Message as KafkaRecord
from pydantic import BaseModel

from di_lifespan import App
from di_lifespan.kafka import KafkaBroker
from tests.confluent import AdminClient, NewTopic

logger = logging.getLogger(__name__)  # the measured repeats: run with --log-cli-level=INFO
ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 3
MAX_CONCURRENCY = 3
# docs/kafka.md: a commit is due every 100 messages (or every second), commits at least 50 ms
# apart, which bounds what a crash re-delivers. These services handle about 1,000 messages a
# second (3 workers, 3 ms each), so a consumer's handled-but-uncommitted messages are at most
# 100 or 50 ms of work, with slack for a slow machine, plus what its handlers hold.
COMMIT_EVERY = 100
UNCOMMITTED_BOUND = COMMIT_EVERY * PARTITIONS + MAX_CONCURRENCY
QUIET = 1.0  # seconds without a new output after which a stopped service's output is all read


def client(bootstrap: str, settings: Mapping[str, str | bool] | None = None) -> dict[str, object]:
    """A librdkafka configuration for the broker at ``bootstrap``; it logs errors only."""
    return {"bootstrap.servers": bootstrap, "log_level": 3, **(settings or {})}


@dataclass(frozen=True)
class Topics:
    """One test's own topics and group, on the session's broker."""

    bootstrap: str
    input: str
    output: str
    group: str


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    """Fresh input, output and dead-letter topics (3 partitions each) and a fresh group name."""
    name = f"it-{uuid.uuid4().hex[:10]}"
    made = Topics(kafka_bootstrap, f"{name}.in", f"{name}.out", f"{name}.group")
    admin = AdminClient(client(kafka_bootstrap))
    wanted = [made.input, made.output, f"{made.input}.dlq"]
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1) for topic in wanted]
    )
    for future in futures.values():
        future.result(timeout=10)
    return made


def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> list[Position]:
    """Send (key, value) records with librdkafka, keyed as Java and aiokafka place keys."""
    producer = Producer(
        client(bootstrap, {"enable.idempotence": False, "partitioner": "murmur2_random"})
    )
    positions: list[Position] = []
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, record: KafkaRecord) -> None:
        if error is not None:
            failures.append(error)
        else:
            positions.append(Position(record.key() or b"", *placed(record)))

    for key, value in records:
        producer.produce(topic, value, key, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(15) == 0, "the inputs were not all sent"
    assert not failures, failures
    return positions


def produce_ids(bootstrap: str, topic: str, count: int) -> None:
    """Send ``{"id": i}`` for i in range(count), each keyed by its id."""
    produce(
        bootstrap, topic, [(str(i).encode(), json.dumps({"id": i}).encode()) for i in range(count)]
    )


def placed(record: KafkaRecord) -> tuple[int, int]:
    """A record's partition and offset (the client types them optional: unset before a send)."""
    partition, offset = record.partition(), record.offset()
    assert partition is not None
    assert offset is not None
    return partition, offset


def header_bytes(record: KafkaRecord) -> dict[str, bytes]:
    """A read record's headers, each value as bytes."""
    headers = record.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {name: data.encode() if isinstance(data, str) else data or b"" for name, data in pairs}


@dataclass(frozen=True)
class Position:
    """Where a produced record landed."""

    key: bytes
    partition: int
    offset: int


@dataclass
class Record:
    """A record read back, with what the assertions need."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


@dataclass
class Reader:
    """Reads a topic from its beginning with librdkafka, without joining any group."""

    bootstrap: str
    topic: str
    counts_ids: bool = True  # the topic holds {"id": int} bodies: count them
    records: list[Record] = field(default_factory=list, repr=False)
    ids: Counter[int] = field(default_factory=Counter, repr=False)
    by_worker: Counter[str] = field(default_factory=Counter)
    _consumer: Consumer | None = field(default=None, repr=False)

    def __enter__(self) -> Reader:
        # A group.id is required by the client; it is never joined (assign, not subscribe).
        self._consumer = Consumer(
            client(
                self.bootstrap,
                {"group.id": f"reader-{uuid.uuid4().hex}", "enable.auto.commit": False},
            )
        )
        self._consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        )
        return self

    def __exit__(self, *_: object) -> None:
        if self._consumer is not None:
            self._consumer.close()

    def poll(self, seconds: float) -> int:
        """Read what arrives within ``seconds``; the number of records read."""
        assert self._consumer is not None
        read = 0
        for record in self._consumer.consume(1000, seconds):
            error = record.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"reading {self.topic}: {error}")
            value = record.value() or b""
            headers = header_bytes(record)
            self.records.append(Record(*placed(record), record.key(), value, headers))
            if self.counts_ids:
                self.ids[json.loads(value)["id"]] += 1
                self.by_worker[headers.get("x-worker", b"").decode()] += 1
            read += 1
        return read

    def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Read until ``done()``; fail naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not seen within {timeout} s ({len(self.ids)} ids read)")
            self.poll(0.2)

    def until_quiet(self, timeout: float = 15.0) -> None:
        """Read until nothing new arrives for QUIET seconds (the writers have stopped)."""
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < QUIET:
            assert time.monotonic() < deadline, f"{self.topic} never went quiet"
            if self.poll(0.2):
                quiet_since = time.monotonic()

    @property
    def duplicates(self) -> int:
        return sum(self.ids.values()) - len(self.ids)


class Service:
    """tests/apps/kafka_service.py in a child process, its output in files."""

    def __init__(self, topics: Topics, directory: Path, worker: str, delay: float) -> None:
        self.worker = worker
        self._stdout = directory / f"{worker}.out"
        self._stderr = directory / f"{worker}.err"
        with self._stdout.open("w") as stdout, self._stderr.open("w") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.apps.kafka_service",
                    topics.bootstrap,
                    topics.input,
                    topics.output,
                    topics.group,
                ],
                cwd=ROOT,
                stdout=stdout,
                stderr=stderr,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "HANDLER_DELAY": str(delay),
                    "MAX_CONCURRENCY": str(MAX_CONCURRENCY),
                    "WORKER": worker,
                },
            )

    @property
    def stderr(self) -> str:
        return self._stderr.read_text()

    def stop(self, signal_number: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send the signal and wait for the exit; the exit status."""
        self.process.send_signal(signal_number)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def services(topics: Topics, tmp_path: Path) -> Iterator[Callable[[str, float], Service]]:
    """Start services on the test's topics; any still running at the end is killed."""
    started: list[Service] = []

    def start(worker: str, delay: float) -> Service:
        service = Service(topics, tmp_path, worker, delay)
        started.append(service)
        return service

    yield start
    for service in started:
        service.close()


def stop_mid_stream_and_restart(
    topics: Topics, services: Callable[[str, float], Service], stop: signal.Signals
) -> tuple[Reader, int, int]:
    """2,000 inputs; ``stop`` the service after 400 outputs, start another, read to the end.

    Returns the reader (every output read), how many ids were out at the stop, and the
    first service's exit code.
    """
    count = 2000
    produce_ids(topics.bootstrap, topics.input, count)
    first = services("first", 0.003)
    with Reader(topics.bootstrap, topics.output) as outputs:
        outputs.until(lambda: len(outputs.ids) >= 400, 30, "400 outputs of the first run")
        exit_code = first.stop(stop)
        outputs.poll(0.5)
        at_stop = len(outputs.ids)
        assert at_stop < count, "the stop came after the stream ended"
        second = services("second", 0.0)
        outputs.until(lambda: len(outputs.ids) == count, 30, f"all {count} ids")
        assert second.stop() == 0, second.stderr
        outputs.until_quiet()
    assert sorted(outputs.ids) == list(range(count))
    return outputs, at_stop, exit_code


@pytest.mark.timeout(60)
def test_a_killed_service_loses_nothing_and_repeats_only_what_it_had_not_committed(
    topics: Topics, services: Callable[[str, float], Service]
) -> None:
    """SIGKILL mid-stream, restart: no input without output; repeats within the commit cadence."""
    outputs, at_kill, exit_code = stop_mid_stream_and_restart(topics, services, signal.SIGKILL)
    assert exit_code == -signal.SIGKILL
    duplicates = outputs.duplicates
    logger.info("SIGKILL after %d ids: %d duplicate outputs", at_kill, duplicates)
    assert duplicates <= UNCOMMITTED_BOUND


@pytest.mark.timeout(60)
def test_a_terminated_service_hands_over_exactly_once(
    topics: Topics, services: Callable[[str, float], Service]
) -> None:
    """SIGTERM mid-stream exits 0, and after a restart every input has exactly one output."""
    outputs, at_stop, exit_code = stop_mid_stream_and_restart(topics, services, signal.SIGTERM)
    assert exit_code == 0
    repeated = {id_: n for id_, n in outputs.ids.items() if n > 1}
    assert repeated == {}, f"{len(repeated)} ids repeated after a graceful stop at {at_stop}"


class Item(BaseModel):
    """An input body."""

    id: int


async def test_bad_bodies_from_another_client_are_dead_lettered_and_the_good_one_goes_through(
    topics: Topics,
) -> None:
    """Each bad body from another client goes to <topic>.dlq with error headers; the good passes."""
    app = App(
        broker=KafkaBroker(topics.bootstrap, idempotent=False, session_timeout_ms=2000),
        graceful_timeout=5,
    )

    @app.subscriber(topics.input, group=topics.group)
    @app.publisher(topics.output)
    async def relay(item: Item) -> dict[str, int]:
        return {"id": item.id}

    bad = {
        b"malformed": (b'{"id": 1', "ValidationError", "Invalid JSON"),
        b"binary": (b"\xff\xfe\x00\x9c", "ValidationError", "Invalid JSON"),
        b"missing": (b'{"name": "x"}', "ValidationError", "id: Field required"),
        b"wrong-type": (
            b'{"id": "seven"}',
            "ValidationError",
            "id: Input should be a valid integer",
        ),
        b"empty": (b"", "ValidationError", "Invalid JSON"),
    }
    records = [(key, body) for key, (body, _, _) in bad.items()] + [(b"good", b'{"id": 7}')]
    with anyio.fail_after(40):
        async with app:
            sent = await anyio.to_thread.run_sync(produce, topics.bootstrap, topics.input, records)
            with Reader(topics.bootstrap, f"{topics.input}.dlq", counts_ids=False) as letters:
                await anyio.to_thread.run_sync(
                    letters.until, lambda: len(letters.records) >= len(bad), 20, "dead letters"
                )
            with Reader(topics.bootstrap, topics.output) as outputs:
                await anyio.to_thread.run_sync(
                    outputs.until, lambda: 7 in outputs.ids, 20, "the good output"
                )
    where = {position.key: position for position in sent}
    assert sorted(record.key or b"" for record in letters.records) == sorted(bad)
    for letter in letters.records:
        key = letter.key or b""
        body, error_type, error = bad[key]
        assert letter.value == body
        assert letter.headers["x-error-type"] == error_type.encode(), key
        assert error.encode() in letter.headers["x-error"], (key, letter.headers["x-error"])
        assert letter.headers["x-original-topic"] == topics.input.encode()
        assert letter.headers["x-original-partition"] == str(where[key].partition).encode()
        assert letter.headers["x-original-offset"] == str(where[key].offset).encode()
    assert outputs.ids == Counter({7: 1})


@pytest.mark.timeout(60)
def test_a_member_joining_then_leaving_mid_stream_loses_nothing(
    topics: Topics, services: Callable[[str, float], Service]
) -> None:
    """A member joins mid-stream, then leaves: nothing lost, repeats within the commit cadence."""
    count = 3000
    produce_ids(topics.bootstrap, topics.input, count)
    first = services("first", 0.01)
    with Reader(topics.bootstrap, topics.output) as outputs:
        outputs.until(lambda: len(outputs.ids) >= 200, 30, "200 outputs of the first member")
        second = services("second", 0.01)
        outputs.until(
            lambda: outputs.by_worker["second"] >= 100, 30, "100 outputs of the second member"
        )
        at_join = len(outputs.ids)
        assert at_join < count, "the second member joined after the stream ended"
        assert second.stop() == 0, second.stderr
        first_at_leave = outputs.by_worker["first"]
        outputs.until(lambda: len(outputs.ids) == count, 40, f"all {count} ids")
        assert first.stop() == 0, first.stderr
        outputs.until_quiet()
    assert sorted(outputs.ids) == list(range(count))
    assert outputs.by_worker["first"] > first_at_leave, "the first member took nothing back"
    duplicates = outputs.duplicates
    logger.info(
        "join with %d ids done, then leave: %d duplicate outputs, by worker %s",
        at_join,
        duplicates,
        dict(outputs.by_worker),
    )
    assert duplicates <= UNCOMMITTED_BOUND, f"outputs by worker: {dict(outputs.by_worker)}"
