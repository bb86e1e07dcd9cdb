"""Waiting, in tests that use the memory broker directly, until every message is handled."""

from __future__ import annotations

from di_lifespan import MemoryBroker


async def drained(broker: MemoryBroker) -> None:
    """Return once every subscribed group has committed every message stored for it."""
    while broker.pending():
        await broker.wait_for_change()
