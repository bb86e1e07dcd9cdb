"""An outside view of services on a Kafka-protocol broker: librdkafka clients and child processes.

The service (tests/apps/kafka_service.py) runs in child processes; an external client
(confluent-kafka, i.e. librdkafka) produces its inputs and reads its outputs from the beginning
of the output topic, counting ids (the embedded broker's end offsets cannot say when a topic
has been read to its end). The fixtures that use these are in tests/reliability/conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka import Message as KafkaRecord

ROOT = Path(__file__).resolve().parent.parent.parent
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


HeaderList = list[tuple[str, str | bytes | None]]  # as librdkafka takes and gives them


def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None]],
    headers: Sequence[HeaderList | None] = (),
) -> list[Position]:
    """Send (key, value) records with librdkafka, keyed as Java and aiokafka place keys.

    ``headers``, when given, holds each record's headers, in the order of ``records``.
    """
    producer = Producer(
        client(bootstrap, {"enable.idempotence": False, "partitioner": "murmur2_random"})
    )
    positions: list[Position] = []
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, record: KafkaRecord) -> None:
        if error is not None:
            failures.append(error)
        else:
            positions.append(Position(record.key(), *placed(record)))

    for number, (key, value) in enumerate(records):
        extra = headers[number] if number < len(headers) else None
        producer.produce(topic, value, key, on_delivery=delivered, headers=extra)
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


def header_list(record: KafkaRecord) -> HeaderList:
    """A read record's headers as (name, value) pairs, in order, a name possibly repeated."""
    headers = record.headers() or []
    return list(headers.items() if isinstance(headers, dict) else headers)


def header_bytes(record: KafkaRecord) -> dict[str, bytes]:
    """A read record's headers, each value as bytes."""
    headers = record.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {name: data.encode() if isinstance(data, str) else data or b"" for name, data in pairs}


@dataclass(frozen=True)
class Position:
    """Where a produced record landed."""

    key: bytes | None
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
    header_list: HeaderList = field(default_factory=list)


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
            pairs = header_list(record)
            self.records.append(Record(*placed(record), record.key(), value, headers, pairs))
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
    def stdout(self) -> str:
        return self._stdout.read_text()

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
