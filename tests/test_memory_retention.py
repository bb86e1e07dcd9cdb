"""The memory broker's retention: old messages go, offsets and groups stay right."""

from __future__ import annotations

import logging

import pytest

from di_lifespan import App, ConfigurationError, MemoryBroker, Message
from di_lifespan._brokers import broker_from
from di_lifespan._memory import RETENTION
from tests.drain import drained


async def fill(broker: MemoryBroker, topic: str, count: int, first: int = 0) -> None:
    """Send ``count`` numbered messages to ``topic``."""
    for number in range(first, first + count):
        await broker.send(topic, str(number).encode())


def values(messages: list[Message]) -> list[int]:
    return [int(message.value) for message in messages]


async def test_a_partition_keeps_its_last_retention_messages_with_their_offsets() -> None:
    """Past ``retention`` the oldest go; messages() returns the rest with their own offsets."""
    broker = MemoryBroker(retention=4)
    await fill(broker, "t", 10)
    kept = broker.messages("t")
    assert values(kept) == [6, 7, 8, 9]
    assert [message.offset for message in kept] == [6, 7, 8, 9]
    assert broker.start_offsets("t") == [6]
    assert broker.end_offsets("t") == [10]


async def test_retention_counts_per_partition() -> None:
    """Each partition keeps ``retention`` messages of its own."""
    broker = MemoryBroker(partitions=2, retention=3)
    await fill(broker, "t", 20)  # no key: partitions in turn, 10 each
    assert broker.start_offsets("t") == [7, 7]
    assert broker.end_offsets("t") == [10, 10]
    assert sorted(values(broker.messages("t"))) == [14, 15, 16, 17, 18, 19]


async def test_the_memory_held_stays_bounded() -> None:
    """However many are sent, a partition stores at most a quarter more than ``retention``."""
    broker = MemoryBroker(retention=8)
    await fill(broker, "t", 1_000)
    stored = broker._topics["t"].partitions[0]  # what is held, not what is shown
    assert len(stored) <= 10
    assert values(broker.messages("t")) == list(range(992, 1_000))


async def test_the_default_keeps_a_million_a_partition_and_none_keeps_everything() -> None:
    """Tests reading messages(topic) see every message: the default bound is far above them."""
    assert MemoryBroker().retention == RETENTION == 1_000_000
    broker = MemoryBroker(retention=None)
    await fill(broker, "t", 50)
    assert values(broker.messages("t")) == list(range(50))
    assert broker.start_offsets("t") == [0]
    assert broker.start_offsets("unused") == [0]


@pytest.mark.parametrize("retention", [0, -1, True, 2.5, "10"])
def test_a_retention_that_is_not_a_positive_whole_number_is_refused(retention: object) -> None:
    """MemoryBroker(retention=) takes a positive whole number or None."""
    with pytest.raises(ConfigurationError, match=r"MemoryBroker\(retention\)"):
        MemoryBroker(retention=retention)  # type: ignore[arg-type]  # the wrong types on purpose


def test_a_memory_url_sets_the_retention() -> None:
    """memory://?retention=N sets it, beside partitions; without it the default applies."""
    broker = broker_from("memory://?partitions=3&retention=500")
    assert isinstance(broker, MemoryBroker)
    assert broker.retention == 500
    default = broker_from("memory://")
    assert isinstance(default, MemoryBroker)
    assert default.retention == RETENTION
    with pytest.raises(ConfigurationError, match="retention must be a whole number"):
        broker_from("memory://?retention=lots")


async def test_a_new_group_below_the_log_start_reads_from_the_log_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As auto.offset.reset=earliest: what retention dropped is skipped, with a warning."""
    broker = MemoryBroker(retention=4)
    await fill(broker, "orders", 10)
    app = App(broker=broker)
    seen: list[int] = []

    @app.subscriber("orders", group="billing")
    async def handle(message: Message) -> None:
        seen.append(message.offset)

    with caplog.at_level(logging.WARNING, logger="di_lifespan"):
        async with app:
            await drained(broker)
    assert seen == [6, 7, 8, 9]
    assert broker.committed("billing", "orders") == [10]
    (warning,) = [r.getMessage() for r in caplog.records if "log start" in r.getMessage()]
    assert "group billing, orders[0]: offset 0 is below the log start 6" in warning
    assert "6 messages dropped unread" in warning


async def test_a_committed_offset_below_the_log_start_goes_on_from_the_log_start() -> None:
    """A group back after retention dropped what it had not read reads what is left."""
    broker = MemoryBroker(retention=4)
    app = App(broker=broker)
    seen: list[int] = []

    @app.subscriber("orders", group="billing")
    async def handle(message: Message) -> None:
        seen.append(int(message.value))

    async with app:
        await fill(broker, "orders", 2)
        await drained(broker)
    assert broker.committed("billing", "orders") == [2]
    await fill(broker, "orders", 10, first=2)  # offsets 2..11 while the app is down
    assert broker.committed("billing", "orders") == [2]  # retention leaves commits alone
    assert broker.start_offsets("orders") == [8]
    async with app:
        await drained(broker)
    assert seen == [0, 1, 8, 9, 10, 11]
    assert broker.committed("billing", "orders") == [12]


async def test_a_consumer_that_keeps_up_loses_nothing_while_retention_trims() -> None:
    """Handled as they come, every message is handled once; ends and commits count them all."""
    broker = MemoryBroker(partitions=2, retention=3)
    app = App(broker=broker)
    seen: list[int] = []

    @app.subscriber("in", group="g")
    @app.publisher("out")
    async def double(number: int) -> int:
        seen.append(number)
        return number * 2

    async with app:
        for number in range(20):
            await app.publish("in", number)
            await drained(broker)
    assert sorted(seen) == list(range(20))
    assert sum(broker.end_offsets("out")) == 20
    assert broker.committed("g", "in") == [10, 10]
    assert broker.start_offsets("in") == [7, 7]
    assert len(broker.messages("out")) == 6
    assert broker.pending() == 0
