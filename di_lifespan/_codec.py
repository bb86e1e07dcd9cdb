"""How bodies, keys and headers become bytes, and how a body becomes a handler's argument.

One function, ``encode``, serves a handler's return value, ``Outgoing``, ``app.publish`` and
``Publisher.publish``. What is sent for each kind of value:

- ``str`` (a str-Enum, a ``NewType`` of str, a ``Literal`` string) as its UTF-8 text, with the
  header ``content-type: text/plain; charset=utf-8``;
- ``bytes`` (bytearray, memoryview) as they are, with ``content-type: application/octet-stream``;
- anything else as JSON through pydantic (models, dataclasses, dicts, lists, numbers, bools,
  None, int-Enums, datetimes...), with no content-type header: JSON is the default, so messages
  from producers that set no header are read as JSON.

A ``content-type`` the caller gives in ``headers`` wins over ours. A value pydantic cannot
dump, a key that is not str or bytes, a header value that is not str or bytes raise
EncodingError before anything is sent.

``decoder_for(T)`` reads a message for a handler parameter annotated ``T``, by its
content-type:

- ``text/...``: the UTF-8 text, validated as ``T`` (so ``Literal["a"]``, a str-Enum or
  ``str | None`` get the string that was published); when ``T`` takes no string, the text is
  validated as JSON;
- ``application/octet-stream``: the bytes, validated as ``T``; when ``T`` takes no bytes,
  validated as JSON (a JSON body forwarded as bytes still reads as a model);
- none or any other: JSON validated as ``T``.

Whatever the content-type, a ``bytes`` parameter gets the raw body and a ``str`` parameter
the body's UTF-8 text: the fast paths, and what producers that send plain text expect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic_core import to_json

from ._errors import EncodingError, describe
from ._message import HeaderPairs, Headers, Message

__all__ = [
    "BINARY",
    "CONTENT_TYPE",
    "TEXT",
    "Decoder",
    "Encoded",
    "decoder_for",
    "encode",
]

CONTENT_TYPE = "content-type"
TEXT = b"text/plain; charset=utf-8"
BINARY = b"application/octet-stream"

Validate = Callable[[Any], Any]
_BINARY_TYPES = (bytes, bytearray, memoryview)  # a tuple: an X | Y union is built per call
Encoded = tuple[bytes, bytes | None, HeaderPairs | None]
"""A message as sent: value, key and headers as (name, value) pairs."""


def encode(value: Any, key: str | bytes | None = None, headers: Headers | None = None) -> Encoded:
    """The value, key and headers of a message to publish, as bytes (see the module docstring).

    Raises EncodingError, naming what cannot be encoded, before anything is sent.
    """
    content_type: bytes | None = None
    try:
        if isinstance(value, pydantic.BaseModel):  # first: the common, benchmarked case
            body = value.__pydantic_serializer__.to_json(value)
        elif isinstance(value, str):
            body, content_type = value.encode(), TEXT
        elif isinstance(value, _BINARY_TYPES):
            body, content_type = bytes(value), BINARY
        else:
            body = to_json(value)
    except (ValueError, TypeError) as error:  # PydanticSerializationError is a ValueError
        raise EncodingError(f"a value of type {type(value).__name__}", describe(error)) from error
    if key is not None and not isinstance(key, bytes):
        key = _key(key)
    encoded = _headers(headers) if headers else None
    if content_type is not None and not (
        encoded and any(name == CONTENT_TYPE for name, _ in encoded)
    ):
        encoded = [(CONTENT_TYPE, content_type), *(encoded or ())]
    return body, key, encoded


def _key(key: object) -> bytes:
    if isinstance(key, str):
        return key.encode()
    raise EncodingError(f"a key of type {type(key).__name__}", "a key must be str, bytes or None")


def _headers(headers: Headers) -> list[tuple[str, bytes]]:
    """Headers as (name, value) pairs in order; a mapping's in its iteration order."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    encoded = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:  # noqa: PLR2004  # (name, value)
            raise EncodingError(
                f"a header of type {type(pair).__name__}",
                "headers are a mapping or a sequence of (name, value) pairs",
            )
        name, value = pair
        if not isinstance(name, str):
            raise EncodingError(
                f"a header name of type {type(name).__name__}", "a header name must be str"
            )
        if isinstance(value, str):
            encoded.append((name, value.encode()))
        elif isinstance(value, bytes):
            encoded.append((name, value))
        else:
            raise EncodingError(
                f"header {name!r} of type {type(value).__name__}",
                "a header value must be str or bytes",
            )
    return encoded


@dataclass(frozen=True, slots=True)
class Decoder:
    """How a handler parameter annotated ``T`` reads a message's body.

    ``from_json`` reads a body without headers (JSON, the common case) straight from its
    bytes; ``__call__`` reads any message by its content-type. A hot loop tests
    ``message.headers`` itself and calls ``from_json``, saving a call per message.
    Both raise pydantic.ValidationError (or UnicodeDecodeError) for a body that does not fit.
    """

    from_json: Callable[[bytes], Any]
    from_message: Callable[[Message], Any]

    def __call__(self, message: Message) -> Any:
        if message.headers:
            return self.from_message(message)
        return self.from_json(message.value)


def decoder_for(annotation: Any) -> Decoder:
    """The Decoder for a handler parameter annotated ``annotation``."""
    if annotation is bytes:
        return Decoder(bytes, _raw)
    if annotation is str:
        return Decoder(bytes.decode, _text)  # UTF-8, bytes.decode's default
    from_python: Validate
    from_json: Callable[[bytes], Any]
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        from_python, from_json = annotation.model_validate, annotation.model_validate_json
    else:
        adapter = pydantic.TypeAdapter(annotation)
        from_python, from_json = adapter.validate_python, adapter.validate_json

    def from_message(message: Message) -> Any:
        content_type = message.headers.get(CONTENT_TYPE)
        if content_type is not None:
            if content_type.startswith(b"text/"):
                return _as_published(from_python, from_json, message.value.decode(), message)
            if content_type.startswith(BINARY):
                # Raw bytes are what other producers send without a header: a body that fits
                # neither way is explained as it would be without the header, by the JSON error.
                return _as_published(
                    from_python, from_json, message.value, message, json_explains=True
                )
        return from_json(message.value)

    return Decoder(from_json, from_message)


def _as_published(
    from_python: Validate,
    from_json: Validate,
    value: Any,
    message: Message,
    *,
    json_explains: bool = False,
) -> Any:
    """The text or bytes as they are if the annotation takes them, else read as JSON."""
    try:
        return from_python(value)
    except pydantic.ValidationError as error:
        try:
            return from_json(message.value)
        except pydantic.ValidationError as json_error:
            # text that is not JSON at all is explained better by the first attempt
            raise (error if _not_json(json_error) and not json_explains else json_error) from None


def _not_json(error: pydantic.ValidationError) -> bool:
    return any(item["type"] == "json_invalid" for item in error.errors(include_input=False))


def _raw(message: Message) -> bytes:
    return message.value


def _text(message: Message) -> str:
    return message.value.decode()
