"""Round trips: what the framework publishes, a handler annotated with the same type reads."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal, NewType, Optional

import anyio
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from di_lifespan import DEAD_LETTER_HEADERS, App, EncodingError, MemoryBroker, Outgoing
from di_lifespan._codec import BINARY, CONTENT_TYPE, TEXT, decoder_for, encode
from di_lifespan._message import Message
from di_lifespan.testing import TestClient
from tests.drain import drained


class Color(enum.StrEnum):
    RED = "red"
    NULL = "null"  # a str-Enum whose value is also a JSON literal
    NUMBER = "1"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Shade(enum.Enum):
    DARK = "dark"
    LIGHT = "light"


UserId = NewType("UserId", str)
Count = NewType("Count", int)


class Point(pydantic.BaseModel):
    x: int
    label: str


@dataclasses.dataclass
class Box:
    width: float
    tags: list[str]


# Text without surrogates (they are not UTF-8); every other character is fair game.
TEXT_VALUES = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
NUMBERS = st.floats(allow_nan=False)  # NaN is never equal to itself, so it cannot be compared

# annotation -> the values a handler annotated so may receive
KINDS: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "str": (str, TEXT_VALUES),
    "literal": (Literal["a", "null", "1", "true"], st.sampled_from(["a", "null", "1", "true"])),
    "str_enum": (Color, st.sampled_from(Color)),
    "int_enum": (Level, st.sampled_from(Level)),
    "enum": (Shade, st.sampled_from(Shade)),
    "new_type_str": (UserId, TEXT_VALUES.map(UserId)),
    "new_type_int": (Count, st.integers().map(Count)),
    "optional_str": (Optional[str], st.none() | TEXT_VALUES),  # noqa: UP045  # users write it too
    "str_or_none": (str | None, st.none() | TEXT_VALUES),
    "int": (int, st.integers()),
    "float": (float, NUMBERS),
    "decimal": (Decimal, st.decimals(allow_nan=False, allow_infinity=False, places=3)),
    "bool": (bool, st.booleans()),
    "none": (None, st.none()),
    "dict": (dict[str, int], st.dictionaries(TEXT_VALUES, st.integers(), max_size=4)),
    "list": (list[str], st.lists(TEXT_VALUES, max_size=4)),
    "model": (Point, st.builds(Point, x=st.integers(), label=TEXT_VALUES)),
    "dataclass": (
        Box,
        st.builds(Box, width=NUMBERS, tags=st.lists(TEXT_VALUES, max_size=3)),
    ),
    "bytes": (bytes, st.binary(max_size=20)),
    "optional_bytes": (bytes | None, st.none() | st.binary(max_size=20)),
}
# Values that are what they look like: published() gives them back without a type.
PLAIN = {"str", "optional_str", "str_or_none", "int", "float", "bool", "none", "dict", "list"}
PLAIN |= {"bytes", "optional_bytes", "new_type_str", "new_type_int", "literal"}


def handler(annotation: Any, sink: list[Any]) -> Callable[..., Any]:
    """A handler whose body parameter is annotated ``annotation``, echoing what it reads."""

    async def echo(body: Any) -> Any:
        sink.append(body)
        return Outgoing(body) if body is None else body  # a plain None would publish nothing

    echo.__annotations__ = {"body": annotation, "return": Any}
    return echo


def round_trip(annotation: Any, values: list[Any]) -> tuple[list[Any], list[Any], TestClient]:
    """Publish ``values``; a handler annotated ``annotation`` echoes each to a second one."""
    app = App()
    first: list[Any] = []
    second: list[Any] = []
    app.subscriber("in")(app.publisher("out")(handler(annotation, first)))
    app.subscriber("out")(handler(annotation, second))

    async def run() -> TestClient:
        async with TestClient(app) as client:
            for value in values:
                await client.publish("in", value)
        return client

    client = anyio.run(run, backend="asyncio")
    return first, second, client


def same(got: list[Any], values: list[Any]) -> bool:
    """Equal, and of the same types (1 is not True, 1.0 is not 1, a str is not a str-Enum)."""
    return got == values and [type(item) for item in got] == [type(item) for item in values]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_a_published_value_reaches_a_handler_annotated_with_its_type(
    kind: str, data: st.DataObject
) -> None:
    """Published by app.publish, then returned by a handler: both handlers read the same value."""
    annotation, strategy = KINDS[kind]
    values = data.draw(st.lists(strategy, min_size=1, max_size=6))
    first, second, client = round_trip(annotation, values)
    assert same(first, values)
    assert same(second, values)
    assert same(client.published("out", annotation), values)
    if kind in PLAIN:
        assert client.published("out") == values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("123", "123"),
        ("hello", "hello"),
        ("null", "null"),
        (b"123", b"123"),
        (b"\xff", b"\xff"),
        (123, 123),
        (None, None),
        ({"a": [1, 2.5]}, {"a": [1, 2.5]}),
        (Point(x=1, label="p"), {"x": 1, "label": "p"}),
        (Color.RED, "red"),
    ],
)
async def test_published_returns_what_was_published(value: Any, expected: Any) -> None:
    """client.published() gives back a str as that str and bytes as bytes, the rest from JSON."""
    app = App()
    async with TestClient(app) as client:
        await client.publish("t", value)
        assert client.published("t") == [expected]
        assert [type(item) for item in client.published("t")] == [type(expected)]


def test_str_and_bytes_carry_a_content_type_and_json_none() -> None:
    """Only non-JSON bodies get a content-type header; a caller's own content-type wins."""
    assert encode("hé") == (b"h\xc3\xa9", None, [(CONTENT_TYPE, TEXT)])
    assert encode(b"\x00", "k") == (b"\x00", b"k", [(CONTENT_TYPE, BINARY)])
    assert encode(bytearray(b"ab")) == (b"ab", None, [(CONTENT_TYPE, BINARY)])
    assert encode({"a": 1}, b"k", {"h": "v"}) == (b'{"a":1}', b"k", [("h", b"v")])
    assert encode(Point(x=1, label="p")) == (b'{"x":1,"label":"p"}', None, None)
    assert encode("{}", headers={CONTENT_TYPE: "application/json"}) == (
        b"{}",
        None,
        [(CONTENT_TYPE, b"application/json")],
    )


def test_headers_are_ordered_pairs_whose_names_may_repeat() -> None:
    """Headers given as pairs keep their order and repeated names; bad ones are EncodingError."""
    pairs: list[tuple[str, str | bytes]] = [("trace", "a"), ("hop", b"1"), ("hop", "2")]
    assert encode(b"x", headers=pairs) == (
        b"x",
        None,
        [(CONTENT_TYPE, BINARY), ("trace", b"a"), ("hop", b"1"), ("hop", b"2")],
    )
    bad_headers: list[tuple[Any, str]] = [
        (["trace"], "a header of type str"),
        ([("trace", "a", "b")], "a header of type tuple"),
        ([(1, b"x")], "a header name of type int"),
        ([("n", 1)], "header 'n' of type int"),
    ]
    for bad, named in bad_headers:
        with pytest.raises(EncodingError, match=named):
            encode(b"x", headers=bad)


def message(value: bytes, content_type: bytes | None = None) -> Message:
    headers = {} if content_type is None else {CONTENT_TYPE: content_type}
    return Message("t", 0, 0, value, headers=headers)


def test_bodies_from_other_producers_read_by_their_content_type() -> None:
    """No header means JSON; any text/* is text; a str parameter always gets the plain text."""
    assert decoder_for(Color)(message(b'"red"')) is Color.RED
    assert decoder_for(Color)(message(b"red", b"text/plain")) is Color.RED
    assert decoder_for(int)(message(b"7", b"application/json")) == 7
    assert decoder_for(str)(message(b"plain words")) == "plain words"
    assert decoder_for(bytes)(message(b"plain", TEXT)) == b"plain"


def test_json_sent_as_text_or_bytes_still_reads_as_a_model() -> None:
    """A model published as a JSON str, or forwarded as bytes, is read from its JSON."""
    body = b'{"x": 1, "label": "p"}'
    assert decoder_for(Point)(message(body, TEXT)) == Point(x=1, label="p")
    assert decoder_for(Point)(message(body, BINARY)) == Point(x=1, label="p")
    assert decoder_for(list[int])(message(b"[1, 2]", TEXT)) == [1, 2]


def test_a_text_body_that_fits_neither_way_is_explained_by_the_closer_reading() -> None:
    """Text that is not JSON gets the text's own error; JSON that does not fit gets the field's."""
    with pytest.raises(pydantic.ValidationError, match="Input should be 'a'"):
        decoder_for(Literal["a"])(message(b"b", TEXT))
    with pytest.raises(pydantic.ValidationError) as caught:
        decoder_for(Point)(message(b'{"x": "many", "label": "p"}', TEXT))
    assert [error["loc"] for error in caught.value.errors()] == [("x",)]


class Price:
    """An object pydantic has no idea how to dump."""


@pytest.mark.parametrize(
    ("value", "key", "headers", "text"),
    [
        (Price(), None, None, "cannot publish a value of type Price: "),
        ({"price": Price()}, None, None, "cannot publish a value of type dict: "),
        ("x", 5, None, "cannot publish a key of type int: a key must be str, bytes or None"),
        ("x", None, {"n": 1}, "cannot publish header 'n' of type int: a header value must be"),
    ],
)
async def test_what_cannot_be_encoded_raises_encoding_error_and_sends_nothing(
    value: Any, key: Any, headers: Any, text: str
) -> None:
    """app.publish raises EncodingError (a TypeError too) naming what is wrong; nothing is sent."""
    broker = MemoryBroker()
    app = App(broker=broker)
    async with app:
        with pytest.raises(EncodingError) as caught:
            await app.publish("t", value, key=key, headers=headers)
        await drained(broker)
    assert str(caught.value).startswith(text)
    assert isinstance(caught.value, TypeError)
    assert "\n" not in str(caught.value)
    assert broker.messages("t") == []


async def test_a_result_that_cannot_be_encoded_is_raised_in_the_test() -> None:
    """Under TestClient, an unencodable result fails client.publish with the EncodingError."""
    app = App()

    @app.subscriber("in")
    @app.publisher("out")
    async def price(body: bytes) -> Price:
        return Price()

    async with TestClient(app) as client:
        with pytest.raises(EncodingError, match="cannot publish a value of type Price"):
            await client.publish("in", b"x")
        assert client.published("out") == []


class Flower(pydantic.BaseModel):
    """A body model for the content-type test."""

    petal_length: float


async def test_bad_bytes_are_explained_as_they_would_be_without_a_content_type() -> None:
    """A test's truncated JSON bytes get the same x-error as a header-less producer's."""
    app = App()

    @app.subscriber("flowers")
    async def read(flower: Flower) -> None:
        raise AssertionError("never reached")

    truncated = b'{"petal_length": 1.'
    async with TestClient(app, raise_handler_errors=False) as client:
        await client.publish("flowers", truncated)  # bytes: sent with a content-type
        await client.broker.send("flowers", truncated)  # as another producer would send it
        await client.settle()
        errors = [m.header(DEAD_LETTER_HEADERS["error"]) for m in client.messages("flowers.dlq")]
    assert len(errors) == 2
    assert errors[0] == errors[1]
    assert "Invalid JSON" in (errors[0] or "")
