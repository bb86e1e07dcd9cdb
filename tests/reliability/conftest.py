"""Fixtures of the reliability suite: a test's own topics on the session's broker, services."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.confluent import AdminClient, NewTopic
from tests.reliability.external import PARTITIONS, Service, Topics, client


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
