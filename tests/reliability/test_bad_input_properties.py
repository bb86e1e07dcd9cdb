"""Bad input, generated: whatever is wrong with a record, it is dead-lettered with its error.

Each example sends one bad record as a raw producer would (straight to the memory broker, with
any key, odd and repeated headers), then a good one. Whatever the record, in one run:

- the bad record goes to ``<topic>.dlq`` once, body, key and headers as sent, with its error;
- the good record after it is handled: the consumer goes on;
- the error log line names the record (``topic[partition]@offset``) and what was wrong in it
  (the field, or why it is not JSON or not UTF-8).
"""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from di_lifespan import DEAD_LETTER_HEADERS, App, MemoryBroker
from tests.drain import drained
from tests.reliability.figures import Figures

TOPIC = "orders"
LIMIT = 64 * 1024  # the memory broker's max_message_bytes in these examples
NAMES = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=12)


class Order(BaseModel):
    """An input body: an id, an optional note, and nothing else."""

    model_config = ConfigDict(extra="forbid")

    id: int
    note: str = ""


@dataclass(frozen=True)
class Bad:
    """A bad record, what kind of bad it is, and what its error must say."""

    kind: str
    value: bytes
    said: str  # in x-error and in the log line
    error_type: str = "ValidationError"
    text: bool = False  # sent as text/plain


def as_json(value: object) -> bytes:
    return json.dumps(value).encode()


@st.composite
def bad_records(draw: st.DrawFn) -> Bad:  # noqa: PLR0911  # one return per kind of bad
    """One bad record of each kind in turn, its details drawn."""
    kind = draw(
        st.sampled_from(
            [
                "malformed",
                "invalid-utf8",
                "text-not-utf8",
                "wrong-type",
                "missing",
                "extra",
                "deep",
                "empty",
                "near-limit",
            ]
        )
    )
    good = as_json({"id": draw(st.integers()), "note": draw(st.text(max_size=20))})
    bad_bytes = draw(st.sampled_from([b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]))
    if kind == "malformed":  # a JSON object cut short is never JSON
        return Bad(kind, good[: draw(st.integers(1, len(good) - 1))], "Invalid JSON")
    if kind == "invalid-utf8":
        return Bad(kind, b'{"id": 1, "note": "' + bad_bytes + b'"}', "Invalid JSON")
    if kind == "text-not-utf8":
        return Bad(kind, b"x" + bad_bytes, "can't decode", "UnicodeDecodeError", text=True)
    if kind == "wrong-type":
        wrong = draw(
            st.one_of(
                st.text(string.ascii_letters, min_size=1, max_size=10),
                st.lists(st.integers(), max_size=3),
                st.dictionaries(NAMES, st.integers(), max_size=2),
                st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f % 1 != 0),
                st.none(),
            )
        )
        return Bad(kind, as_json({"id": wrong}), "id: Input should be a valid integer")
    if kind == "missing":
        return Bad(kind, as_json({"note": draw(st.text(max_size=10))}), "id: Field required")
    if kind == "extra":
        name = draw(NAMES.filter(lambda n: n not in {"id", "note"}))
        value = as_json({"id": 1, name: draw(st.integers() | st.text(max_size=5))})
        return Bad(kind, value, f"{name}: Extra inputs are not permitted")
    if kind == "deep":
        depth = draw(st.integers(300, 10_000))
        opened, closed = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        nested = opened * depth + b"1" + closed * depth
        value = b'{"id": ' + nested + b"}" if draw(st.booleans()) else nested
        return Bad(kind, value, "recursion limit exceeded")
    if kind == "empty":
        return Bad(kind, b"", "Invalid JSON")
    # within a few hundred bytes of the limit: a dead letter refused there goes again, x-error cut
    size = draw(st.integers(LIMIT - 1024, LIMIT - 450))
    return Bad(kind, b'{"id": "' + b"x" * (size - 10) + b'"}', "id: Input should be")


header_lists = st.lists(
    st.tuples(
        st.sampled_from(["", "twice", "trace", "ünï", "a b"]) | NAMES.map(lambda n: f"h-{n}"),
        st.binary(max_size=16),
    ),
    max_size=5,
)


@contextmanager
def error_lines() -> Iterator[list[str]]:
    """The di_lifespan error lines logged inside the block."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect(logging.ERROR)
    target = logging.getLogger("di_lifespan")
    target.addHandler(handler)
    try:
        yield lines
    finally:
        target.removeHandler(handler)


async def run(bad: Bad, key: bytes | None, headers: list[tuple[str, bytes]]) -> MemoryBroker:
    """Send the bad record, then a good one, as a raw producer would; wait until both are done."""
    broker = MemoryBroker(max_message_bytes=LIMIT)
    app = App(broker=broker)

    @app.subscriber(TOPIC, group="g")
    @app.publisher("out")
    async def relay(order: Order) -> Order:
        return order

    sent = [*headers, ("content-type", b"text/plain; charset=utf-8")] if bad.text else headers
    with anyio.fail_after(10):
        async with app:
            for value, record_key, record_headers in [
                (bad.value, key, sent),
                (b'{"id": 7}', key, []),
            ]:
                delivery = await broker.send(
                    TOPIC, value, key=record_key, headers=record_headers or None
                )
                if delivery is not None:
                    await delivery
            await drained(broker)
    return broker


@pytest.fixture(scope="module")
def tally() -> Iterator[Figures]:
    """The figures of every example of the module, reported at its end."""
    figures = Figures("bad-input-properties")
    yield figures
    figures.report()


@settings(max_examples=120, deadline=None)
@given(bad_records(), st.none() | st.binary(max_size=16), header_lists)
def test_any_bad_record_is_dead_lettered_with_its_error_and_the_next_one_is_handled(
    tally: Figures, bad: Bad, key: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    """A bad record of any kind, key and headers: dead-lettered once, named; the next one passes."""
    with error_lines() as lines:
        broker = anyio.run(run, bad, key, headers)
    assert [json.loads(m.value) for m in broker.messages("out")] == [{"id": 7, "note": ""}]
    (letter,) = broker.messages(f"{TOPIC}.dlq")
    assert (letter.value, letter.key) == (bad.value, key)
    sent = [*headers, ("content-type", b"text/plain; charset=utf-8")] if bad.text else headers
    assert list(letter.header_list[: len(sent)]) == sent  # the record's own, in order
    assert letter.header(DEAD_LETTER_HEADERS["error_type"]) == bad.error_type
    assert bad.said in (letter.header(DEAD_LETTER_HEADERS["error"]) or "")
    assert letter.header(DEAD_LETTER_HEADERS["offset"]) == "0"
    (line,) = lines
    assert f" {TOPIC}[0]@0 has an invalid body: " in line
    assert bad.said in line
    assert f"sent to {TOPIC}.dlq after 1 attempt(s)" in line
    tally.inputs += 2
    tally.count(outputs=[tally.inputs - 1], dead_letters=[tally.inputs - 2])
    tally.notes[bad.kind] = int(str(tally.notes.get(bad.kind, 0))) + 1
