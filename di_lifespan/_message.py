"""The incoming message as handlers see it: its coordinates, metadata and raw body."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["Headers", "Message"]

Headers = Mapping[str, str | bytes]


@dataclass(slots=True, eq=False)
class Message:
    """One message read from a topic.

    ``value`` is the raw body; ``attempt`` counts deliveries to the handler, from 1.
    Inject it into a handler by annotating a parameter ``Message``, or into a REQUEST-scoped
    provider by giving the provider a ``Message`` parameter.
    """

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    headers: dict[str, bytes] = field(default_factory=dict)
    timestamp_ms: int = 0
    attempt: int = 1

    @property
    def timestamp(self) -> datetime:
        """When the message was produced, in UTC."""
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)

    @property
    def coordinates(self) -> str:
        """``topic[partition]@offset``, the way log lines name a message."""
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def header(self, name: str) -> str | None:
        """A header's value decoded as UTF-8, or None when the message does not carry it."""
        raw = self.headers.get(name)
        return None if raw is None else raw.decode("utf-8", errors="replace")
