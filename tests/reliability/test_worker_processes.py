"""Worker processes killed, terminated, joining and leaving mid-stream: nothing is lost.

The service (tests/apps/kafka_service.py) runs in child processes on the session's embedded
broker; librdkafka produces the inputs and reads the outputs back, counting them by id
(tests/reliability/external.py). Run with ``--log-cli-level=INFO`` for the figures.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tests.reliability.external import (
    MAX_CONCURRENCY,
    UNCOMMITTED_BOUND,
    Reader,
    Service,
    Topics,
    produce_ids,
)
from tests.reliability.figures import Figures

KILLS = 3
Services = Callable[[str, float], Service]


def ids_beyond(outputs: Reader, count: int) -> Callable[[], bool]:
    """Whether ``outputs`` has read ``count`` distinct ids."""
    return lambda: len(outputs.ids) >= count


@pytest.mark.timeout(90)
def test_a_worker_killed_three_times_loses_nothing_and_repeats_only_what_it_had_not_committed(
    topics: Topics, services: Services
) -> None:
    """SIGKILL mid-stream 3 times, each followed by a restart: every input has an output."""
    figures = Figures("sigkill-restart", inputs=3000)
    produce_ids(topics.bootstrap, topics.input, figures.inputs)
    at_kills: list[int] = []
    with Reader(topics.bootstrap, topics.output) as outputs:
        for run in range(KILLS):
            worker = services(f"run{run}", 0.003)
            outputs.until(ids_beyond(outputs, len(outputs.ids) + 400), 30, f"run {run}'s outputs")
            assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
            outputs.poll(0.3)
            at_kills.append(len(outputs.ids))
        assert at_kills[-1] < figures.inputs, "the last kill came after the stream ended"
        last = services("last", 0.0)
        outputs.until(lambda: len(outputs.ids) == figures.inputs, 40, "every id")
        assert last.stop() == 0, last.stderr
        outputs.until_quiet()
    figures.count(outputs.ids.elements())
    figures.notes.update(kills=KILLS, ids_out_at_each_kill=at_kills)
    figures.report()
    assert figures.lost == []
    # each kill repeats at most what its worker had handled but not committed
    assert figures.duplicates <= KILLS * UNCOMMITTED_BOUND


@pytest.mark.timeout(60)
def test_a_worker_terminated_during_a_burst_hands_over_exactly_once(
    topics: Topics, services: Services
) -> None:
    """SIGTERM during a burst exits 0; after a restart every input has exactly one output."""
    figures = Figures("sigterm-burst", inputs=2000)
    first = services("first", 0.003)
    with Reader(topics.bootstrap, topics.output) as outputs:
        outputs.until(lambda: "ready" in first.stdout, 30, "the first worker ready")
        produce_ids(topics.bootstrap, topics.input, figures.inputs)  # the burst, all at once
        outputs.until(lambda: len(outputs.ids) >= 400, 30, "400 outputs of the first worker")
        assert first.stop(signal.SIGTERM) == 0, first.stderr
        outputs.poll(0.3)
        at_stop = len(outputs.ids)
        assert at_stop < figures.inputs, "the stop came after the burst was handled"
        second = services("second", 0.0)
        outputs.until(lambda: len(outputs.ids) == figures.inputs, 30, "every id")
        assert second.stop() == 0, second.stderr
        outputs.until_quiet()
    figures.count(outputs.ids.elements())
    figures.notes["ids_out_at_stop"] = at_stop
    figures.report()
    assert figures.lost == []
    assert figures.duplicates == 0


@pytest.mark.timeout(90)
def test_three_workers_one_joining_and_one_leaving_mid_stream_lose_nothing(
    topics: Topics, services: Services
) -> None:
    """Two workers, a third joins, the first leaves: nothing lost, only in-flight ones repeated."""
    figures = Figures("rebalance-3-workers", inputs=3000)
    produce_ids(topics.bootstrap, topics.input, figures.inputs)
    first, second = services("first", 0.01), services("second", 0.01)
    with Reader(topics.bootstrap, topics.output) as outputs:
        by = outputs.by_worker
        outputs.until(lambda: by["first"] >= 50 and by["second"] >= 50, 30, "two workers' outputs")
        third = services("third", 0.01)
        outputs.until(lambda: by["third"] >= 100, 30, "100 outputs of the joining worker")
        at_join = len(outputs.ids)
        assert first.stop() == 0, first.stderr
        outputs.poll(0.3)
        at_leave = len(outputs.ids)
        assert at_leave < figures.inputs, "the worker left after the stream ended"
        outputs.until(lambda: len(outputs.ids) == figures.inputs, 40, "every id")
        for worker in (second, third):
            assert worker.stop() == 0, worker.stderr
        outputs.until_quiet()
    figures.count(outputs.ids.elements())
    figures.notes.update(ids_out_at_join=at_join, ids_out_at_leave=at_leave, by_worker=dict(by))
    figures.report()
    assert figures.lost == []
    assert by["second"] > 0
    assert by["third"] > 0
    # a rebalance commits what was handled before the partitions move: only messages in
    # handlers' hands (max_concurrency each, three workers) may be repeated
    assert figures.duplicates <= 3 * MAX_CONCURRENCY, f"outputs by worker: {dict(by)}"
