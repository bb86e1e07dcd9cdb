"""Prometheus metrics of one app: what its handlers did, its consumers' lag, its startup.

Each app has a registry of its own (``app.metrics_registry``; never prometheus-client's global
one), served at ``/metrics`` by the health server. The delivery pipeline reports to a
``SubscriberObserver``; the default one does nothing and wraps nothing, so an app without
metrics pays nothing per message. With metrics on, each subscriber's observer keeps the
labelled children of every metric per topic, created at the topic's first message.

Metrics (every name prefixed ``di_lifespan_``; ``topic`` is the input's topic, ``handler`` the
subscriber's name):

- ``messages_handled_total``, ``messages_failed_total`` (handler calls that returned / raised),
  ``messages_retried_total``, ``messages_dead_lettered_total``, ``messages_dropped_total``;
- ``handler_duration_seconds`` (histogram) and ``handlers_in_flight``;
- ``consumer_lag`` per topic and partition, read when scraped;
- ``resource_startup_seconds`` per resource and ``startup_seconds``, from the startup report.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ._broker import PartitionStatus
from ._message import Message
from ._report import StartupReport

__all__ = ["NO_METRICS", "NO_OBSERVER", "AppMetrics", "Metrics", "SubscriberObserver"]

PREFIX = "di_lifespan"
# From half a millisecond (an in-memory handler) to half a minute (a slow model or a retry storm).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

HandlerCall = Callable[[Message], Awaitable[Any]]


class SubscriberObserver:
    """What one subscriber loop reports to; this base class ignores it all (metrics off)."""

    __slots__ = ()

    def wrap(self, handler: HandlerCall) -> HandlerCall:
        """The handler call the loop makes: ``handler`` itself, so metrics off cost nothing."""
        return handler

    def retried(self, topic: str) -> None:
        """A message of ``topic`` failed and is tried again after a pause."""

    def gave_up(self, topic: str, dead_letter: str | None) -> None:
        """A message of ``topic`` failed for good: sent to ``dead_letter``, or dropped (None)."""


NO_OBSERVER = SubscriberObserver()


class Metrics:
    """The observers one run's subscribers get; this base class gives the no-op one."""

    __slots__ = ()

    def subscriber(self, name: str) -> SubscriberObserver:
        """The observer of the subscriber called ``name``."""
        del name
        return NO_OBSERVER


NO_METRICS = Metrics()


class AppMetrics(Metrics):
    """The metrics of one app, in a registry of its own, kept across the app's runs."""

    __slots__ = (
        "_report",
        "_state",
        "dead_lettered",
        "dropped",
        "failed",
        "handled",
        "in_flight",
        "latency",
        "registry",
        "retried",
    )

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        labels = ("topic", "handler")
        self.handled = Counter(
            f"{PREFIX}_messages_handled",
            "Handler calls that returned (the result is then published).",
            labels,
            registry=registry,
        )
        self.failed = Counter(
            f"{PREFIX}_messages_failed",
            "Handler calls that raised (each attempt; an invalid body counts too).",
            labels,
            registry=registry,
        )
        self.retried = Counter(
            f"{PREFIX}_messages_retried",
            "Failed messages tried again after a pause.",
            labels,
            registry=registry,
        )
        self.dead_lettered = Counter(
            f"{PREFIX}_messages_dead_lettered",
            "Messages sent to the dead-letter topic once their attempts were spent.",
            labels,
            registry=registry,
        )
        self.dropped = Counter(
            f"{PREFIX}_messages_dropped",
            "Messages that failed for good on a subscriber with dead_letter=None.",
            labels,
            registry=registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_handler_duration_seconds",
            "How long one handler call took (decoding and injection included), in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_handlers_in_flight",
            "Handler calls running now.",
            labels,
            registry=registry,
        )
        self._state = _ScrapeState()
        registry.register(_LagCollector(self._state))
        registry.register(_StartupCollector(self._state))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def subscriber(self, name: str) -> SubscriberObserver:
        return _Observer(self, name)

    def render(
        self,
        partitions: Mapping[str, Sequence[PartitionStatus]],
        report: StartupReport | None,
    ) -> bytes:
        """The registry in Prometheus' text format, with lag and startup read from the arguments.

        Synchronous from setting the snapshot to the end: scrapes never mix their snapshots.
        """
        self._state.partitions = partitions
        self._state.report = report
        return generate_latest(self.registry)


class _ScrapeState:
    """What the scrape under way read from the app: the consumers' partitions, the report."""

    __slots__ = ("partitions", "report")

    def __init__(self) -> None:
        self.partitions: Mapping[str, Sequence[PartitionStatus]] = {}
        self.report: StartupReport | None = None


class _LagCollector:
    def __init__(self, state: _ScrapeState) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        lag = GaugeMetricFamily(
            f"{PREFIX}_consumer_lag",
            "Messages of an assigned partition the subscriber's group has not committed yet.",
            labels=("topic", "partition", "handler"),
        )
        for handler, statuses in sorted(self._state.partitions.items()):
            for status in statuses:
                lag.add_metric((status.topic, str(status.partition), handler), status.lag)
        yield lag


class _StartupCollector:
    def __init__(self, state: _ScrapeState) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        per_resource = GaugeMetricFamily(
            f"{PREFIX}_resource_startup_seconds",
            "How long each resource's setup took in the latest startup, in seconds.",
            labels=("resource",),
        )
        total = GaugeMetricFamily(
            f"{PREFIX}_startup_seconds",
            "How long the latest startup took, from building the container to being ready.",
        )
        report = self._state.report
        if report is not None:
            for entry in report.resources:
                if entry.duration is not None:
                    per_resource.add_metric((entry.name,), entry.duration)
            if report.duration is not None:
                total.add_metric((), report.duration)
        yield per_resource
        yield total


class _TopicMetrics:
    """One subscriber's children of every metric for one topic, labelled once."""

    __slots__ = ("dead_lettered", "dropped", "failed", "handled", "in_flight", "latency", "retried")

    def __init__(self, metrics: AppMetrics, topic: str, handler: str) -> None:
        self.handled = metrics.handled.labels(topic, handler)
        self.failed = metrics.failed.labels(topic, handler)
        self.retried = metrics.retried.labels(topic, handler)
        self.dead_lettered = metrics.dead_lettered.labels(topic, handler)
        self.dropped = metrics.dropped.labels(topic, handler)
        self.latency = metrics.latency.labels(topic, handler)
        self.in_flight = metrics.in_flight.labels(topic, handler)


class _Observer(SubscriberObserver):
    __slots__ = ("_metrics", "_name", "_topics")

    def __init__(self, metrics: AppMetrics, name: str) -> None:
        self._metrics = metrics
        self._name = name
        self._topics: dict[str, _TopicMetrics] = {}

    def _of(self, topic: str) -> _TopicMetrics:
        children = self._topics.get(topic)
        if children is None:
            children = self._topics[topic] = _TopicMetrics(self._metrics, topic, self._name)
        return children

    def wrap(self, handler: HandlerCall) -> HandlerCall:
        topics = self._topics
        of = self._of
        clock = time.perf_counter

        async def observed(message: Message) -> Any:
            children = topics.get(message.topic) or of(message.topic)
            children.in_flight.inc()
            began = clock()
            try:
                result = await handler(message)
            except Exception:
                children.latency.observe(clock() - began)
                children.failed.inc()
                raise
            finally:
                children.in_flight.dec()
            children.latency.observe(clock() - began)
            children.handled.inc()
            return result

        return observed

    def retried(self, topic: str) -> None:
        self._of(topic).retried.inc()

    def gave_up(self, topic: str, dead_letter: str | None) -> None:
        children = self._of(topic)
        if dead_letter is None:
            children.dropped.inc()
        else:
            children.dead_lettered.inc()
