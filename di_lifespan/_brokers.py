"""Choosing the broker: an object, or a URL from ``App(broker=...)`` or ``DI_LIFESPAN_BROKER``."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ._broker import Broker
from ._errors import ConfigurationError
from ._kafka import EmbeddedKafkaBroker, KafkaBroker
from ._memory import RETENTION, MemoryBroker

__all__ = ["BROKER_ENV", "broker_from"]

BROKER_ENV = "DI_LIFESPAN_BROKER"
_KNOWN = (
    "memory:// (optionally ?partitions=N&retention=N), kafka://host:9092[,host2:9092...]"
    " (optionally ?idempotent=false&session_timeout_ms=N) and embedded://"
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


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
        return KafkaBroker(
            _bootstrap_servers(where, broker, parts.netloc), **_kafka_options(where, parts.query)
        )
    if parts.scheme == "embedded":
        return EmbeddedKafkaBroker()
    raise ConfigurationError(
        where, f"unknown broker URL {broker!r}; this version supports {_KNOWN}"
    )


def _bootstrap_servers(where: str, url: str, netloc: str) -> str:
    """``host:port[,host:port...]`` from a kafka:// URL, each address checked."""
    if "@" in netloc:
        # Never passed on as part of an address (it would end up in logs): say where it goes.
        raise ConfigurationError(
            where,
            "a kafka:// URL carries no credentials; give SASL or SSL settings to"
            " KafkaBroker(..., security_protocol=..., sasl_mechanism=..., sasl_plain_username=...,"
            " sasl_plain_password=...) instead (docs/kafka.md, security)",
        )
    addresses = [address.strip() for address in netloc.split(",")]
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:  # noqa: PLR2004  # TCP ports
            raise ConfigurationError(
                where, f"{url!r}: expected kafka://host:port[,host:port...], got {address!r}"
            )
    return ",".join(addresses)


def _kafka_options(where: str, query: str) -> dict[str, Any]:
    """KafkaBroker options a kafka:// URL may carry: ``idempotent`` and ``session_timeout_ms``.

    So that a command line can reach a broker that cannot serve idempotence (the embedded
    one) and tune how fast a consumer group forms.
    """
    options: dict[str, Any] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        value = values[-1].strip().lower()
        if name == "idempotent" and value in _TRUE | _FALSE:
            options[name] = value in _TRUE
        elif name == "session_timeout_ms" and value.isdigit() and int(value) > 0:
            options[name] = int(value)
        elif name in ("idempotent", "session_timeout_ms"):
            expected = "true or false" if name == "idempotent" else "a whole number > 0"
            raise ConfigurationError(
                where, f"kafka:// option {name}: expected {expected}, got {value!r}"
            )
        else:
            raise ConfigurationError(
                where,
                f"unknown kafka:// option {name!r}; known: idempotent, session_timeout_ms",
            )
    return options


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
