"""The incoming message as handlers see it: its coordinates, metadata and raw body."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["HeaderPairs", "Headers", "Message"]

Headers = Mapping[str, str | bytes] | Sequence[tuple[str, str | bytes]]
"""Headers to publish: a mapping, or (name, value) pairs in order, where a name may repeat."""
HeaderPairs = Sequence[tuple[str, bytes]]
"""Headers as a transport carries them: (name, value) pairs, in order; a name may repeat."""


@dataclass(slots=True, eq=False)
class Message:
    """One message read from a topic.

    ``value`` is the raw body; ``attempt`` counts deliveries to the handler, from 1.
    ``header_list`` holds the headers as the producer sent them: (name, value) pairs, in
    order, a name possibly repeated; ``headers`` is a dict view of them, where a repeated
    name has its last value.
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
    header_list: tuple[tuple[str, bytes], ...] = ()

    def __post_init__(self) -> None:
        if self.header_list:
            if not self.headers:
                self.headers = dict(self.header_list)
        elif self.headers:
            self.header_list = tuple(self.headers.items())

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
