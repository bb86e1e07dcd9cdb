"""Time limits that tell the truth, shutdown steps a forced stop can cut short, stray cancellations.

- ``TimeLimit``: a step that could not be interrupted (a blocking sync provider, a setup that
  shields itself) and returns after its limit is still over its limit.
- ``StopShields``: shutdown steps run in shielded scopes, so a cancelled caller cannot leave
  finalizers unrun; ``force()`` cancels every such scope, now and later.
- ``seconds``: a time limit given by a user, checked: a positive, finite number.
- ``is_stray_cancellation``: a CancelledError that no cancel scope asked for (user code awaited
  a future that someone else cancelled) is an error of that code, not a stop.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import Any

import anyio

from ._errors import ConfigurationError

__all__ = ["StopShields", "TimeLimit", "is_stray_cancellation", "seconds"]


def seconds(where: str, value: Any) -> float:
    """``value`` as seconds; ConfigurationError naming ``where`` unless positive and finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(where, f"expected a number of seconds, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(where, f"expected a positive number of seconds, got {value!r}")
    return float(value)


class TimeLimit:
    """``with TimeLimit(seconds) as limit: ...``; afterwards ``limit.exceeded`` is the truth.

    The block is cancelled at the deadline; a block that ignores or cannot receive the
    cancellation and returns late counts as exceeded all the same.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.exceeded = False
        self._scope = anyio.move_on_after(seconds)
        self._began = 0.0

    def __enter__(self) -> TimeLimit:
        self._began = anyio.current_time()
        self._scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        suppressed = self._scope.__exit__(exc_type, exc, traceback)
        late = anyio.current_time() - self._began > self.seconds
        self.exceeded = self._scope.cancelled_caught or late
        return bool(suppressed)

    def cancel(self) -> None:
        """End the block now (a forced stop)."""
        self._scope.cancel()


class StopShields:
    """Shielded scopes for the shutdown steps of one run, all cancelled by ``force()``."""

    def __init__(self) -> None:
        self.forced = False
        self._scopes: list[anyio.CancelScope] = []

    def shield(self) -> anyio.CancelScope:
        """A scope a cancelled caller cannot interrupt; already cancelled after ``force()``."""
        return self.track(anyio.CancelScope(shield=True))

    def track(self, scope: anyio.CancelScope) -> anyio.CancelScope:
        """Let ``force()`` cancel ``scope`` too (cancelled at once if it already ran)."""
        if self.forced:
            scope.cancel()
        self._scopes.append(scope)
        return scope

    def force(self) -> None:
        """Cancel every shielded step, running or to come. Never blocks."""
        self.forced = True
        for scope in self._scopes:
            scope.cancel()


def is_stray_cancellation(error: BaseException) -> bool:
    """Whether ``error`` is a CancelledError that no cancellation of the current task caused.

    anyio cancels a task by ``Task.cancel()``, which counts in ``Task.cancelling()``; a
    CancelledError raised while that count is 0 came from a future someone else cancelled.
    """
    if not isinstance(error, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0
