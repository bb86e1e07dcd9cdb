"""/metrics: what the handlers did, their latency, the consumers' lag, each resource's startup."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from di_lifespan import App, MemoryBroker, Provider, Retry, Scope, provide
from di_lifespan._metrics import NO_METRICS, NO_OBSERVER
from di_lifespan.kafka import KafkaBroker
from tests.http_probe import get
from tests.resources import Database, Settings

LOCAL = "127.0.0.1"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(app: App) -> Samples:
    """Every sample of /metrics, by name and labels."""
    answer = await get(app, "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample ``name`` with exactly ``labels``, or None."""
    return samples.get((name, frozenset(labels.items())))


def counting_app() -> App:
    """A handler ``check`` that succeeds on even numbers, fails once on 1, always on 3."""
    app = App(health_port=0, health_host=LOCAL)
    seen: list[int] = []

    @app.subscriber("numbers", group="g", retry=Retry(attempts=3, backoff=0.001))
    async def check(number: int) -> None:
        seen.append(number)
        if number == 3 or (number == 1 and seen.count(1) == 1):
            raise ValueError(f"{number} is odd")

    return app


CHECK = {"topic": "numbers", "handler": "counting_app.<locals>.check"}  # a handler's qualname


async def wait_for(app: App, name: str, expected: float, **labels: str) -> Samples:
    """Scrape until the sample reaches ``expected``; the last scrape."""
    with anyio.fail_after(10):
        while value(samples := await scrape(app), name, **labels) != expected:  # noqa: ASYNC110  # polled over HTTP
            await anyio.sleep(0.01)
    return samples


async def test_metrics_count_a_handled_a_retried_and_a_dead_lettered_message() -> None:
    """One message handled, one retried once then handled, one dead-lettered after 3 attempts."""
    app = counting_app()
    async with app:
        for number in (2, 1, 3):
            await app.publish("numbers", number)
        labels = CHECK
        samples = await wait_for(app, "di_lifespan_messages_dead_lettered_total", 1, **labels)
        assert value(samples, "di_lifespan_messages_handled_total", **labels) == 2
        assert value(samples, "di_lifespan_messages_failed_total", **labels) == 4
        assert value(samples, "di_lifespan_messages_retried_total", **labels) == 3
        assert value(samples, "di_lifespan_messages_dropped_total", **labels) == 0
        assert value(samples, "di_lifespan_handler_duration_seconds_count", **labels) == 6
        bucket = "di_lifespan_handler_duration_seconds_bucket"
        assert value(samples, bucket, le="+Inf", **labels) == 6
        assert value(samples, bucket, le="30.0", **labels) == 6  # cumulative
        assert value(samples, "di_lifespan_handlers_in_flight", **labels) == 0


async def test_counters_last_across_runs_of_one_app_and_apps_do_not_share_them() -> None:
    """A second run of the app counts on from the first; another app starts from zero."""
    app, other = counting_app(), counting_app()
    labels = CHECK
    for _ in range(2):
        async with app:
            await app.publish("numbers", 2)
            await wait_for(app, "di_lifespan_messages_handled_total", _ + 1, **labels)
    async with other:
        samples = await scrape(other)
        assert value(samples, "di_lifespan_messages_handled_total", **labels) is None


async def test_a_message_dropped_without_a_dead_letter_topic_is_counted_as_dropped() -> None:
    """With dead_letter=None and retry=None, a failure counts as failed and dropped."""
    app = App(health_port=0, health_host=LOCAL)

    @app.subscriber("jobs", group="g", retry=None, dead_letter=None)
    async def run_job(job: int) -> None:
        raise RuntimeError(f"job {job} broke")

    async with app:
        await app.publish("jobs", 7)
        labels = {"topic": "jobs", "handler": run_job.__qualname__}
        samples = await wait_for(app, "di_lifespan_messages_dropped_total", 1, **labels)
        assert value(samples, "di_lifespan_messages_failed_total", **labels) == 1
        assert value(samples, "di_lifespan_messages_dead_lettered_total", **labels) == 0


async def test_a_dead_letter_sent_again_cut_short_counts_once() -> None:
    """A dead letter refused as too large and sent again with x-error cut short: one count."""
    broker = MemoryBroker(max_message_bytes=2_000)
    app = App(broker=broker, health_port=0, health_host=LOCAL)

    @app.subscriber("jobs", group="g", retry=None)
    async def run_job(job: bytes) -> None:
        raise RuntimeError("e" * 5_000)  # x-error of 4 KiB: the first dead letter is too large

    async with app:
        await app.publish("jobs", b"j" * 1_000)
        with anyio.fail_after(10):
            while not broker.messages("jobs.dlq"):
                await broker.wait_for_change()
        labels = {"topic": "jobs", "handler": run_job.__qualname__}
        samples = await scrape(app)
        assert value(samples, "di_lifespan_messages_dead_lettered_total", **labels) == 1
        assert value(samples, "di_lifespan_messages_failed_total", **labels) == 1


async def test_in_flight_and_lag_while_a_handler_is_busy() -> None:
    """A handler held on its first message: in-flight 1, and the three messages lag."""
    app = App(health_port=0, health_host=LOCAL)
    entered, release = anyio.Event(), anyio.Event()

    @app.subscriber("slow", group="g")
    async def crawl(item: int) -> None:
        entered.set()
        await release.wait()

    async with app:
        for item in range(3):
            await app.publish("slow", item)
        await entered.wait()
        samples = await scrape(app)
        labels = {"topic": "slow", "handler": crawl.__qualname__}
        assert value(samples, "di_lifespan_handlers_in_flight", **labels) == 1
        lag = {"topic": "slow", "partition": "0", "handler": crawl.__qualname__}
        assert value(samples, "di_lifespan_consumer_lag", **lag) == 3
        release.set()
        await wait_for(app, "di_lifespan_consumer_lag", 0, **lag)


class SlowResources(Provider):
    """Two resources, each taking a little while to set up."""

    @provide(scope=Scope.APP)
    async def settings(self) -> AsyncIterator[Settings]:
        await anyio.sleep(0.05)
        yield Settings()

    @provide(scope=Scope.APP)
    async def database(self, settings: Settings) -> AsyncIterator[Database]:
        await anyio.sleep(0.02)
        yield Database()


async def test_each_resources_startup_duration_is_a_gauge() -> None:
    """resource_startup_seconds has one sample per resource, as long as its setup took."""
    app = App(SlowResources(), health_port=0, health_host=LOCAL)
    async with app:
        samples = await scrape(app)
        report = app.startup_report
        assert report is not None
        for entry in report.resources:
            measured = value(samples, "di_lifespan_resource_startup_seconds", resource=entry.name)
            assert measured == entry.duration
        durations = [
            measured
            for (name, _), measured in samples.items()
            if name == "di_lifespan_resource_startup_seconds"
        ]
        assert len(durations) == 2
        assert min(durations) >= 0.02
        total = value(samples, "di_lifespan_startup_seconds")
        assert total is not None
        assert total >= 0.07


async def test_metrics_of_your_own_in_the_apps_registry_are_served() -> None:
    """A counter registered in app.metrics_registry appears at /metrics beside ours."""
    app = App(health_port=0, health_host=LOCAL)
    predictions = Counter("predictions", "Predictions made.", registry=app.metrics_registry)
    predictions.inc(5)
    async with app:
        samples = await scrape(app)
        assert value(samples, "predictions_total") == 5
        assert value(samples, "process_cpu_seconds_total") is not None


def test_without_metrics_the_handler_is_called_as_it_is() -> None:
    """Metrics off: the observer hands back the handler itself, so no message pays for them."""

    async def handler(message: object) -> None:
        del message

    assert NO_METRICS.subscriber("any") is NO_OBSERVER
    assert NO_OBSERVER.wrap(handler) is handler


async def test_lag_per_partition_on_kafka(kafka_bootstrap: str) -> None:
    """On the embedded Kafka broker, lag per partition is read at scrape time, then drops to 0."""
    topic = f"lag-{uuid.uuid4().hex[:8]}"
    broker = KafkaBroker(
        kafka_bootstrap, idempotent=False, session_timeout_ms=2000, create_topics={topic: 2}
    )
    app = App(broker=broker, health_port=0, health_host=LOCAL)
    entered, release = anyio.Event(), anyio.Event()

    @app.subscriber(topic, group=f"g-{topic}")
    async def hold(item: int) -> None:
        entered.set()
        await release.wait()

    async with app:
        for item in range(6):
            await app.publish(topic, item, key=str(item))
        await entered.wait()
        with anyio.fail_after(10):
            while True:
                samples = await scrape(app)
                lags = {
                    dict(labels)["partition"]: measured
                    for (name, labels), measured in samples.items()
                    if name == "di_lifespan_consumer_lag"
                }
                if sum(lags.values()) == 6:
                    break
                await anyio.sleep(0.05)
        assert set(lags) == {"0", "1"}
        release.set()
        with anyio.fail_after(15):
            while any(  # noqa: ASYNC110  # polled over HTTP
                measured
                for (name, _), measured in (await scrape(app)).items()
                if name == "di_lifespan_consumer_lag"
            ):
                await anyio.sleep(0.05)
