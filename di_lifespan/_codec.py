"""How bodies, keys and headers become bytes, and how a body becomes a handler's argument.

Encoding is the same for a handler's return value, ``app.publish`` and ``Publisher``:
``bytes`` go as they are, ``str`` as UTF-8, pydantic models as their JSON, anything else as
JSON through pydantic (dataclasses, dicts, lists, datetimes...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pydantic
from pydantic_core import to_json

from ._message import Headers

__all__ = ["decoder_for", "encode_headers", "encode_key", "encode_value"]


def encode_value(value: Any) -> bytes:
    """The bytes a value is published as."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, pydantic.BaseModel):
        return value.__pydantic_serializer__.to_json(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return to_json(value)


def encode_key(key: str | bytes | None) -> bytes | None:
    """A message key as bytes: ``str`` as UTF-8."""
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    raise TypeError(f"a message key must be str, bytes or None, not {type(key).__name__}")


def encode_headers(headers: Headers | None) -> dict[str, bytes]:
    """Header values as bytes: ``str`` as UTF-8."""
    if not headers:
        return {}
    encoded = {}
    for name, value in headers.items():
        if isinstance(value, str):
            encoded[name] = value.encode()
        elif isinstance(value, bytes):
            encoded[name] = value
        else:
            raise TypeError(f"header {name!r} must be str or bytes, not {type(value).__name__}")
    return encoded


def decoder_for(annotation: Any) -> Callable[[bytes], Any]:
    """A function turning a raw body into a value of ``annotation``.

    ``bytes`` are passed as they are and ``str`` decoded as UTF-8; pydantic models are
    validated from JSON; any other annotation is validated from JSON by a TypeAdapter.
    It raises pydantic.ValidationError (or UnicodeDecodeError) for a body that does not fit.
    """
    if annotation is bytes:
        return bytes
    if annotation is str:
        return _utf8
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation.model_validate_json
    return pydantic.TypeAdapter(annotation).validate_json


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8")
