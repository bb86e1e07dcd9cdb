"""Bad input from another client (librdkafka) to a running service: each one dead-lettered, named.

Each bad record carries an ``x-case`` header naming it; its dead letter keeps the record's own
headers, so the case is read back from there. Good records sent after the bad ones show that
the consumer goes on.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import anyio
import anyio.to_thread
import pytest
from pydantic import BaseModel, ConfigDict

from di_lifespan import App
from di_lifespan.kafka import KafkaBroker
from tests.reliability.external import HeaderList, Reader, Topics, produce
from tests.reliability.figures import Figures

# librdkafka's own limit for a record it produces (message.max.bytes, 1,000,000 by default)
CLIENT_MAX_MESSAGE_BYTES = 1_000_000
NEAR_LIMIT = CLIENT_MAX_MESSAGE_BYTES - 2_000
GOOD = 6  # good records, sent after the bad ones, keyed over every partition


class Item(BaseModel):
    """An input body: an id, and nothing else."""

    model_config = ConfigDict(extra="forbid")

    id: int


@dataclass(frozen=True)
class Bad:
    """A bad record and what its dead letter and log line must say."""

    value: bytes | None  # None: a null body (a tombstone)
    key: bytes | None
    error_type: str
    said: str  # in x-error and in the log line: the wrong field, or what is wrong
    headers: HeaderList | None = None


BAD = {
    "malformed": Bad(b'{"id": 1', b"k1", "ValidationError", "Invalid JSON"),
    "invalid-utf8": Bad(b'{"id": "\xff\xfe"}', b"k2", "ValidationError", "Invalid JSON"),
    "binary": Bad(b"\xff\xfe\x00\x9c", b"k3", "ValidationError", "Invalid JSON"),
    "missing": Bad(b'{"name": "x"}', b"k4", "ValidationError", "id: Field required"),
    "wrong-type": Bad(
        b'{"id": "seven"}', b"k5", "ValidationError", "id: Input should be a valid integer"
    ),
    "extra": Bad(b'{"id": 1, "surplus": true}', b"k6", "ValidationError", "surplus: Extra inputs"),
    "deep": Bad(b"[" * 10_000 + b"]" * 10_000, b"k7", "ValidationError", "recursion limit"),
    "empty": Bad(b"", b"k8", "ValidationError", "Invalid JSON"),
    "null-body": Bad(None, b"k12", "ValidationError", "Invalid JSON"),
    "near-limit": Bad(
        b'{"id": "' + b"x" * (NEAR_LIMIT - 10) + b'"}',
        b"k9",
        "ValidationError",
        "id: Input should be a valid integer",
    ),
    "null-key": Bad(b'{"id": null}', None, "ValidationError", "id: Input should be a valid"),
    "odd-headers": Bad(
        b'{"id": []}',
        b"k10",
        "ValidationError",
        "id: Input should be a valid integer",
        [("", b"empty name"), ("twice", b"\xff\xfe"), ("twice", b"\x80"), ("none", None)],
    ),
    "text-not-utf8": Bad(
        b"\xc3\x28",
        b"k11",
        "UnicodeDecodeError",
        "can't decode byte",
        [("content-type", b"text/plain; charset=utf-8")],
    ),
}


@pytest.mark.timeout(60)
async def test_bad_records_from_librdkafka_are_dead_lettered_with_their_error_and_work_goes_on(
    topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    """Every kind of bad record goes to <topic>.dlq with its error; the good ones after it pass."""
    caplog.set_level(logging.ERROR, logger="di_lifespan")
    figures = Figures("bad-input-kafka", inputs=len(BAD) + GOOD)
    app = App(
        broker=KafkaBroker(topics.bootstrap, idempotent=False, session_timeout_ms=2000),
        graceful_timeout=5,
    )

    @app.subscriber(topics.input, group=topics.group)
    @app.publisher(topics.output)
    async def relay(item: Item) -> dict[str, int]:
        return {"id": item.id}

    records = [(bad.key, bad.value) for bad in BAD.values()]
    records += [(b"good-%d" % i, b'{"id": %d}' % i) for i in range(GOOD)]
    headers = [[("x-case", case.encode()), *(bad.headers or [])] for case, bad in BAD.items()]
    with anyio.fail_after(50):
        async with app:
            sent = await anyio.to_thread.run_sync(
                produce, topics.bootstrap, topics.input, records, headers
            )
            with Reader(topics.bootstrap, f"{topics.input}.dlq", counts_ids=False) as letters:
                await anyio.to_thread.run_sync(
                    letters.until, lambda: len(letters.records) >= len(BAD), 30, "dead letters"
                )
            with Reader(topics.bootstrap, topics.output) as outputs:
                await anyio.to_thread.run_sync(
                    outputs.until, lambda: len(outputs.ids) >= GOOD, 20, "the good outputs"
                )
    placed = {(position.partition, position.offset) for position in sent}
    by_case = {letter.headers["x-case"].decode(): letter for letter in letters.records}
    assert sorted(by_case) == sorted(BAD)
    figures.count(
        outputs=(len(BAD) + i for i in outputs.ids.elements()),
        dead_letters=(list(BAD).index(case) for case in by_case),
    )
    figures.report()
    assert figures.lost == []
    assert figures.duplicates == 0
    for case, letter in by_case.items():
        bad = BAD[case]
        where = (
            int(letter.headers["x-original-partition"]),
            int(letter.headers["x-original-offset"]),
        )
        assert where in placed, case
        # a null body is read as an empty one, and its dead letter has an empty body
        assert (letter.key, letter.value) == (bad.key, bad.value or b""), case
        assert letter.headers["x-error-type"] == bad.error_type.encode(), case
        assert bad.said.encode() in letter.headers["x-error"], (case, letter.headers["x-error"])
        assert letter.headers["x-original-topic"] == topics.input.encode()
        assert letter.header_list[: 1 + len(bad.headers or [])] == [
            ("x-case", case.encode()),
            *(bad.headers or []),
        ], case
        coordinates = f"{topics.input}[{where[0]}]@{where[1]}"
        (line,) = [r.getMessage() for r in caplog.records if f" {coordinates} " in r.getMessage()]
        assert bad.said in line, (case, line)
        assert re.search(rf"sent to {re.escape(topics.input)}\.dlq after 1 attempt", line), line
