"""A service whose connection to the broker is cut for a few seconds: not ready, then goes on.

The app reaches an embedded broker only through a TCP proxy (tests/tcp_proxy.py) that the test
cuts: every connection of the app's aiokafka clients is closed and new ones are refused for
CUT_SECONDS, then allowed again. The test's own producer and reader are spared by the proxy, so
inputs keep arriving while the app has lost the broker. The app's /ready probe is polled all
along: 503 while cut, 200 again after.
"""

from __future__ import annotations

import json
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
from tests.http_probe import get
from tests.reliability.figures import Figures
from tests.tcp_proxy import KafkaProxy

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


async def probe(app: App, answers: list[tuple[float, int]]) -> None:
    """GET /ready every 0.1 s until cancelled; ``answers`` gets (time, status) of each."""
    while True:
        answers.append((time.monotonic(), (await get(app, "/ready")).status))
        await anyio.sleep(0.1)


@pytest.mark.timeout(40)
async def test_a_three_second_broker_cut_makes_the_app_not_ready_and_loses_nothing(
    proxy: KafkaProxy,
) -> None:
    """A 3 s cut mid-stream: /ready is 503, then 200; every input still gets an output."""
    name = f"outage-{uuid.uuid4().hex[:8]}"
    source, sink = f"{name}.in", f"{name}.out"
    await create_topics(proxy.upstream, source, sink, f"{source}.dlq")
    app = App(
        broker=KafkaBroker(proxy.address, idempotent=False, session_timeout_ms=6_000),
        graceful_timeout=5,
        health_port=0,
        health_host="127.0.0.1",
    )
    handled: Counter[int] = Counter()

    @app.subscriber(source, group=f"{name}.group")
    @app.publisher(sink)
    async def echo(item: Item) -> Item:
        handled[item.id] += 1
        return item

    outputs = Outputs()
    acked: list[float] = []
    answers: list[tuple[float, int]] = []
    figures = Figures("broker-cut", inputs=INPUTS)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(read, proxy.upstream, sink, outputs)
        async with app, anyio.create_task_group() as probing:
            probing.start_soon(probe, app, answers)  # stopped before the app stops serving
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
            assert app.status is AppStatus.RUNNING
            with anyio.fail_after(10):
                while not answers or answers[-1][1] != 200:  # noqa: ASYNC110  # the prober's list
                    await anyio.sleep(0.05)
            probing.cancel_scope.cancel()
        tasks.cancel_scope.cancel()

    after_cut = [t for t in outputs.arrivals if t >= restored_at]
    not_ready = [t for t, status in answers if status == 503]
    figures.count(outputs.ids.elements())
    figures.notes.update(
        cut=f"{CUT_SECONDS:.1f}s_from_{cut_at - feed_started:.1f}s",
        severed=proxy.severed,
        refused=proxy.refused,
        acked_during_cut=sum(cut_at <= t < restored_at for t in acked),
        first_503_after_cut=f"{not_ready[0] - cut_at:.2f}s" if not_ready else None,
        ready_again_after_restore=f"{not_ready[-1] + 0.1 - restored_at:.2f}s"
        if not_ready
        else None,
        first_output_after_restore=f"{after_cut[0] - restored_at:.2f}s" if after_cut else None,
        handler_runs=sum(handled.values()),
    )
    figures.report()
    assert proxy.severed > 0
    assert not_ready, "/ready never said 503 during the cut"
    assert cut_at <= not_ready[0] < restored_at + 1.5, "the 503 came after the cut"
    assert answers[-1][1] == 200
    assert figures.lost == [], f"{len(figures.lost)} inputs without an output"
