"""Choosing the broker: an object, or a URL from ``App(broker=...)`` or ``DI_LIFESPAN_BROKER``."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

from ._broker import Broker
from ._errors import ConfigurationError
from ._kafka import EmbeddedKafkaBroker, KafkaBroker
from ._memory import RETENTION, MemoryBroker

__all__ = ["BROKER_ENV", "broker_from"]

BROKER_ENV = "DI_LIFESPAN_BROKER"
_KNOWN = (
    "memory:// (optionally memory://?partitions=N), kafka://host:9092[,host2:9092...]"
    " and embedded://"
)


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
    where = "App(broker=...)" if broker != os.environ.get(BROKER_ENV) else BROKER_ENV
    parts = urlsplit(broker)
    if parts.scheme == "memory":
        partitions = _whole(broker, parts.query, "partitions")
        retention = _whole(broker, parts.query, "retention")
        return MemoryBroker(
            partitions=1 if partitions is None else partitions,
            retention=RETENTION if retention is None else retention,
        )
    if parts.scheme == "kafka":
        return KafkaBroker(_bootstrap_servers(where, broker, parts.netloc))
    if parts.scheme == "embedded":
        return EmbeddedKafkaBroker()
    raise ConfigurationError(
        where, f"unknown broker URL {broker!r}; this version supports {_KNOWN}"
    )


def _bootstrap_servers(where: str, url: str, netloc: str) -> str:
    """``host:port[,host:port...]`` from a kafka:// URL, each address checked."""
    addresses = [address.strip() for address in netloc.split(",")]
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:  # noqa: PLR2004  # TCP ports
            raise ConfigurationError(
                where, f"{url!r}: expected kafka://host:port[,host:port...], got {address!r}"
            )
    return ",".join(addresses)


def _whole(url: str, query: str, name: str) -> int | None:
    """The whole number ``name=N`` in a memory:// URL's query, or None without one."""
    values = parse_qs(query).get(name)
    if not values:
        return None
    try:
        return int(values[-1])
    except ValueError:
        raise ConfigurationError(
            f"broker URL {url!r}", f"{name} must be a whole number, got {values[-1]!r}"
        ) from None
