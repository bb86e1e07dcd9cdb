"""Prometheus metrics of one app: what its handlers did, its consumers' lag, its startup.

Each app has a registry of its own (``app.metrics_registry``; never prometheus-client's global
one), served at ``/metrics`` by the health server. The delivery pipeline reports to a
``SubscriberObserver``; the default one does nothing and wraps nothing, so an app without
metrics pays nothing per message. With metrics on, each subscriber's observer keeps plain
counts per topic (no lock: only the event loop updates them), read when scraped.

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
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
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

    __slots__ = ("_handlers", "_state", "registry")

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        # Per (topic, handler): plain numbers the event loop adds to, turned into metric
        # families when scraped. A prometheus-client child takes a lock on every update,
        # four of them a message: several microseconds, as much as the whole pipeline.
        self._handlers: dict[tuple[str, str], _TopicStats] = {}
        self._state = _ScrapeState()
        registry.register(_HandlerCollector(self._handlers))
        registry.register(_LagCollector(self._state))
        registry.register(_StartupCollector(self._state))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def subscriber(self, name: str) -> SubscriberObserver:
        return _Observer(self._handlers, name)

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


class _TopicStats:
    """What one subscriber's handler did with the messages of one topic."""

    __slots__ = (
        "buckets",
        "dead_lettered",
        "dropped",
        "failed",
        "handled",
        "in_flight",
        "retried",
        "seconds",
    )

    def __init__(self) -> None:
        self.handled = 0
        self.failed = 0
        self.retried = 0
        self.dead_lettered = 0
        self.dropped = 0
        self.in_flight = 0
        self.seconds = 0.0  # the latency histogram's sum
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket (not cumulative), +Inf last


class _ScrapeState:
    """What the scrape under way read from the app: the consumers' partitions, the report."""

    __slots__ = ("partitions", "report")

    def __init__(self) -> None:
        self.partitions: Mapping[str, Sequence[PartitionStatus]] = {}
        self.report: StartupReport | None = None


_COUNTERS = (
    ("messages_handled", "handled", "Handler calls that returned (the result is then published)."),
    (
        "messages_failed",
        "failed",
        "Handler calls that raised (each attempt; an invalid body counts too).",
    ),
    ("messages_retried", "retried", "Failed messages tried again after a pause."),
    (
        "messages_dead_lettered",
        "dead_lettered",
        "Messages sent to the dead-letter topic once their attempts were spent.",
    ),
    (
        "messages_dropped",
        "dropped",
        "Messages that failed for good on a subscriber with dead_letter=None.",
    ),
)
_BOUNDS = (
    *(repr(bound) for bound in LATENCY_BUCKETS),
    "+Inf",
)  # "le" labels, as Prometheus writes them


class _HandlerCollector:
    def __init__(self, handlers: Mapping[tuple[str, str], _TopicStats]) -> None:
        self._handlers = handlers

    def collect(self) -> Iterable[Metric]:
        labels = ("topic", "handler")
        rows = sorted(self._handlers.items())
        for name, field, documentation in _COUNTERS:
            family = CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)
            for key, stats in rows:
                family.add_metric(key, getattr(stats, field))
            yield family
        latency = HistogramMetricFamily(
            f"{PREFIX}_handler_duration_seconds",
            "How long one handler call took (decoding and injection included), in seconds.",
            labels=labels,
        )
        for key, stats in rows:
            cumulative = list(zip(_BOUNDS, accumulate(stats.buckets), strict=True))
            latency.add_metric(key, cumulative, stats.seconds)
        yield latency
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_handlers_in_flight", "Handler calls running now.", labels=labels
        )
        for key, stats in rows:
            in_flight.add_metric(key, stats.in_flight)
        yield in_flight


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


class _Observer(SubscriberObserver):
    __slots__ = ("_handlers", "_name", "_topics")

    def __init__(self, handlers: dict[tuple[str, str], _TopicStats], name: str) -> None:
        self._handlers = handlers
        self._name = name
        self._topics: dict[str, _TopicStats] = {}

    def _of(self, topic: str) -> _TopicStats:
        stats = self._topics.get(topic)
        if stats is None:
            # shared by every run of the app: counters go on across runs
            key = (topic, self._name)
            stats = self._handlers.get(key) or self._handlers.setdefault(key, _TopicStats())
            self._topics[topic] = stats
        return stats

    def wrap(self, handler: HandlerCall) -> HandlerCall:
        topics = self._topics
        of = self._of
        clock = time.perf_counter
        bounds = LATENCY_BUCKETS

        async def observed(message: Message) -> Any:
            stats = topics.get(message.topic) or of(message.topic)
            stats.in_flight += 1
            began = clock()
            try:
                result = await handler(message)
            except Exception:
                took = clock() - began
                stats.failed += 1
                stats.seconds += took
                stats.buckets[bisect_left(bounds, took)] += 1
                raise
            finally:
                stats.in_flight -= 1
            took = clock() - began
            stats.handled += 1
            stats.seconds += took
            stats.buckets[bisect_left(bounds, took)] += 1
            return result

        return observed

    def retried(self, topic: str) -> None:
        self._of(topic).retried += 1

    def gave_up(self, topic: str, dead_letter: str | None) -> None:
        stats = self._of(topic)
        if dead_letter is None:
            stats.dropped += 1
        else:
            stats.dead_lettered += 1
