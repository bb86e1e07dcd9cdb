"""A service whose connection to the broker is cut for a few seconds goes on, losing nothing.

The app reaches an embedded broker only through a TCP proxy (tests/tcp_proxy.py) that the test
cuts: every connection of the app's aiokafka clients is closed and new ones are refused for
CUT_SECONDS, then allowed again. The test's own producer and reader are spared by the proxy, so
inputs keep arriving while the app has lost the broker.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel

from di_lifespan import App, AppStatus
from di_lifespan.kafka import EmbeddedKafka, KafkaBroker
from tests.tcp_proxy import KafkaProxy

logger = logging.getLogger(__name__)  # the figures: run with --log-cli-level=INFO

FEEDER = "outage-feeder"  # the client.id of the test's own clients, which the proxy spares
PARTITIONS = 3
INPUTS = 1_500
RATE = 300  # inputs a second: the feed lasts 5 s
CUT_AFTER = 1.5  # seconds into the feed
CUT_SECONDS = 3.0
SETTLE = 20.0  # seconds allowed for every output to appear after the feed


class Item(BaseModel):
    """An input and its output: the same id."""

    id: int


@dataclass
class Outputs:
    """What the reader saw on the output topic, and when."""

    ids: Counter[int] = field(default_factory=Counter)
    arrivals: list[float] = field(default_factory=list)


@pytest.fixture
async def proxy() -> AsyncIterator[KafkaProxy]:
    """A proxy in front of a dedicated embedded broker that advertises the proxy's address."""
    async with anyio.create_task_group() as tasks:
        # The broker's port is only known once it is chosen: the proxy learns it below.
        relay = KafkaProxy("127.0.0.1:0", spared={FEEDER})
        await relay.serve(tasks)
        async with EmbeddedKafka(advertised_address=relay.address) as kafka:
            relay.upstream = kafka.bootstrap_servers
            yield relay
        tasks.cancel_scope.cancel()


async def create_topics(bootstrap: str, *topics: str) -> None:
    """Create the topics with PARTITIONS partitions each."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=FEEDER)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1) for topic in topics])
    finally:
        await admin.close()


async def read(bootstrap: str, topic: str, outputs: Outputs) -> None:
    """Read the topic from its beginning, without a group, until cancelled."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, client_id=FEEDER, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async for record in consumer:
            assert record.value is not None  # the app publishes a body
            outputs.ids[json.loads(record.value)["id"]] += 1
            outputs.arrivals.append(time.monotonic())
    finally:
        with anyio.CancelScope(shield=True):
            await consumer.stop()


async def feed(bootstrap: str, topic: str, acked: list[float]) -> None:
    """Send INPUTS ids at RATE a second; ``acked`` gets the time of each acknowledgement."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, client_id=FEEDER, enable_idempotence=False, acks="all"
    )
    await producer.start()
    try:
        step = 30
        for first in range(0, INPUTS, step):
            started = time.monotonic()
            futures = [
                await producer.send(topic, Item(id=i).model_dump_json().encode(), key=b"%d" % i)
                for i in range(first, min(first + step, INPUTS))
            ]
            for future in futures:
                future.add_done_callback(lambda _: acked.append(time.monotonic()))
            await anyio.sleep(max(0.0, step / RATE - (time.monotonic() - started)))
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.timeout(40)
async def test_a_three_second_broker_cut_loses_nothing_and_the_app_runs_on(
    proxy: KafkaProxy,
) -> None:
    """A 3 s cut of every connection mid-stream: every input still gets an output, no crash."""
    name = f"outage-{uuid.uuid4().hex[:8]}"
    source, sink = f"{name}.in", f"{name}.out"
    await create_topics(proxy.upstream, source, sink, f"{source}.dlq")
    app = App(
        broker=KafkaBroker(proxy.address, idempotent=False, session_timeout_ms=6_000),
        graceful_timeout=5,
    )
    handled: Counter[int] = Counter()

    @app.subscriber(source, group=f"{name}.group")
    @app.publisher(sink)
    async def echo(item: Item) -> Item:
        handled[item.id] += 1
        return item

    outputs = Outputs()
    acked: list[float] = []
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(read, proxy.upstream, sink, outputs)
        async with app:
            feed_started = time.monotonic()
            tasks.start_soon(feed, proxy.upstream, source, acked)
            await anyio.sleep(CUT_AFTER)
            proxy.cut()
            cut_at = time.monotonic()
            await anyio.sleep(CUT_SECONDS)
            proxy.restore()
            restored_at = time.monotonic()
            with anyio.move_on_after(INPUTS / RATE - CUT_AFTER - CUT_SECONDS + SETTLE):
                while len(outputs.ids) < INPUTS:  # noqa: ASYNC110  # the reader has no event
                    await anyio.sleep(0.05)
            done_at = time.monotonic()
            assert app.status is AppStatus.RUNNING
        tasks.cancel_scope.cancel()

    missing = sorted(set(range(INPUTS)) - outputs.ids.keys())
    duplicates = sum(outputs.ids.values()) - len(outputs.ids)
    after_cut = [t for t in outputs.arrivals if t >= restored_at]
    logger.info(
        "cut %.1f s at %.1f s into the feed: %d connections severed, %d refused; %d of %d"
        " inputs acknowledged during the cut; first output %.2f s after the restore; all"
        " outputs %.1f s after the feed began; %d duplicate outputs, %d handler runs",
        CUT_SECONDS,
        cut_at - feed_started,
        proxy.severed,
        proxy.refused,
        sum(cut_at <= t < restored_at for t in acked),
        INPUTS,
        (after_cut[0] - restored_at) if after_cut else float("nan"),
        done_at - feed_started,
        duplicates,
        sum(handled.values()),
    )
    assert proxy.severed > 0
    assert not missing, f"{len(missing)} inputs without an output, the first {missing[:10]}"
