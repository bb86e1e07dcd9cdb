"""Choosing the broker: an object, or a URL from ``App(broker=...)`` or ``DI_LIFESPAN_BROKER``."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

from ._broker import Broker
from ._errors import ConfigurationError
from ._memory import MemoryBroker

__all__ = ["BROKER_ENV", "broker_from"]

BROKER_ENV = "DI_LIFESPAN_BROKER"
_KNOWN = "memory:// (optionally memory://?partitions=N)"


def broker_from(broker: str | Broker | None) -> Broker:
    """The broker an app uses: the object given, or one made from a URL (default memory://)."""
    if broker is None:
        broker = os.environ.get(BROKER_ENV) or "memory://"
    if not isinstance(broker, str):
        if not all(hasattr(broker, name) for name in ("start", "send", "subscribe", "stop")):
            raise ConfigurationError(
                "App(broker=...)", f"expected a broker URL or object, got {broker!r}"
            )
        return broker
    parts = urlsplit(broker)
    if parts.scheme == "memory":
        return MemoryBroker(partitions=_partitions(broker, parts.query))
    raise ConfigurationError(
        "App(broker=...)" if broker != os.environ.get(BROKER_ENV) else BROKER_ENV,
        f"unknown broker URL {broker!r}; this version supports {_KNOWN}",
    )


def _partitions(url: str, query: str) -> int:
    values = parse_qs(query).get("partitions", ["1"])
    try:
        return int(values[-1])
    except ValueError:
        raise ConfigurationError(
            f"broker URL {url!r}", f"partitions must be a whole number, got {values[-1]!r}"
        ) from None
