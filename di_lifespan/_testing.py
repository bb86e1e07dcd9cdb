"""The test client: the app's whole lifespan on a fresh memory broker, with resources swapped.

``TestClient(app, overrides=[...])`` starts the app as ``async with app`` would — hooks,
eager resources, handlers — but on its own ``MemoryBroker`` and with the override providers
placed after the app's, so their factories replace the app's for the same types. The app
object is left as it was: the next test starts it again with other overrides. It runs
through ``App.lifespan(...)``, the same public way any code can run an app on another broker
with overrides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, TypeVar, overload

import anyio
import pydantic
from dishka import AsyncContainer
from dishka.provider import BaseProvider

from ._app import App
from ._codec import decoder_for
from ._errors import ConfigurationError, LifespanStateError, describe
from ._memory import MemoryBroker
from ._message import Headers, Message
from ._overrides import Override, check_overrides, override

__all__ = ["Override", "TestClient", "override"]

T = TypeVar("T")
DEFAULT_SETTLE_TIMEOUT = 10.0
DEFAULT_GRACEFUL_TIMEOUT = 1.0


class TestClient:
    """Runs an app's whole lifespan in a test, on an in-memory broker.

    ``overrides`` are dishka providers, or ``override(Type, value)``; each type they provide
    must be one the app provides, and replaces it (its real setup never runs). ``context``
    adds values to the app's ``context=``. ``partitions`` is how many partitions each topic of
    the client's MemoryBroker gets. ``graceful_timeout`` replaces the app's for the test (by
    default the app's, at most 1 s: a test should not wait 30 s for a stuck handler).

    With ``raise_handler_errors`` (the default) a handler's exception is raised to the test:
    by the ``publish`` or ``settle`` that waited for it, or else when the client exits (several
    together as an ExceptionGroup). Set it to False to let the delivery policy work (retries,
    then the dead-letter topic) and assert on that.
    """

    __test__ = False  # not a test class, whatever pytest's name rules say

    def __init__(
        self,
        app: App,
        *,
        overrides: Sequence[BaseProvider | Override] = (),
        context: Mapping[Any, Any] | None = None,
        raise_handler_errors: bool = True,
        settle_timeout: float = DEFAULT_SETTLE_TIMEOUT,
        graceful_timeout: float | None = None,
        partitions: int = 1,
    ) -> None:
        if not isinstance(app, App):
            raise ConfigurationError("TestClient(app)", f"expected a di_lifespan App, got {app!r}")
        self.app = app
        self.broker = MemoryBroker(partitions=partitions)
        self._overrides = check_overrides("TestClient(overrides=...)", overrides)
        self._context = dict(context or {})
        self._raise_handler_errors = raise_handler_errors
        self._settle_timeout = settle_timeout
        self._graceful_timeout = (
            min(app.graceful_timeout, DEFAULT_GRACEFUL_TIMEOUT)
            if graceful_timeout is None
            else graceful_timeout
        )
        self._errors: list[BaseException] = []
        self._lifespan: AbstractAsyncContextManager[App] | None = None

    async def __aenter__(self) -> TestClient:
        lifespan = self.app.lifespan(
            broker=self.broker,
            overrides=self._overrides,
            context=self._context,
            graceful_timeout=self._graceful_timeout,
            on_handler_error=self._errors.append if self._raise_handler_errors else None,
            # a free port, never the app's own: tests run beside each other and a deployed app
            health_port=None if self.app.health_port is None else 0,
        )
        await lifespan.__aenter__()
        self._lifespan = lifespan
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is None:
            raise LifespanStateError("exit the test client", "not started by it")
        try:
            await lifespan.__aexit__(exc_type, exc, traceback)
        except Exception as error:
            # The shutdown failed too: its error is raised, carrying the handlers' as notes.
            # A cancellation is not caught here: it goes on as it is.
            for handler_error in self._errors:
                error.add_note(f"a handler failed as well: {describe(handler_error)}")
            self._errors.clear()
            raise
        if exc is None:
            self._raise_handler_errors_seen()

    def _raise_handler_errors_seen(self) -> None:
        errors, self._errors = self._errors, []
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise BaseExceptionGroup(f"{len(errors)} handler errors", errors)

    @property
    def container(self) -> AsyncContainer:
        """The running app's container, to get resources from and assert on."""
        return self.app.container

    async def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: str | bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Publish, then return once that message and every message it caused are handled.

        Raises the first exception a handler raised meanwhile (with raise_handler_errors).
        """
        await self.app.publish(topic, value, key=key, headers=headers)
        await self.settle()

    async def settle(self) -> None:
        """Wait until every subscribed group has handled and committed every message.

        Raises the handler errors seen so far (with raise_handler_errors), and TimeoutError
        when messages are still unhandled after ``settle_timeout`` seconds.
        """
        # The clock is read too: handlers that publish to each other wake this wait on every
        # send, and a task that is always runnable is never handed its deadline's cancellation.
        deadline = anyio.current_time() + self._settle_timeout
        with anyio.move_on_after(self._settle_timeout):
            while self.broker.pending() and not self._errors:
                if anyio.current_time() >= deadline:
                    break
                await self.broker.wait_for_change()
        self._raise_handler_errors_seen()
        if left := self.broker.pending_by_topic():
            topics = ", ".join(f"{topic} ({count})" for topic, count in sorted(left.items()))
            raise TimeoutError(
                f"{sum(left.values())} message(s) still not handled after"
                f" {self._settle_timeout:g} s, in {topics} (TestClient(settle_timeout=...))",
            )

    def messages(self, topic: str) -> list[Message]:
        """Every message published to ``topic`` (with key and headers), in order."""
        return self.broker.messages(topic)

    @overload
    def published(self, topic: str) -> list[Any]: ...

    @overload
    def published(self, topic: str, as_type: type[T]) -> list[T]: ...

    def published(self, topic: str, as_type: Any = None) -> list[Any]:
        """The values published to ``topic``, in order, read back as they were published.

        A published str comes back as that str, bytes as those bytes, anything else from its
        JSON (dicts, lists, numbers...). With ``as_type``, each body is read the way a handler
        annotated ``as_type`` reads it (a pydantic model, an Enum, a dataclass...).
        """
        messages = self.messages(topic)
        if as_type is not None:
            decode = decoder_for(as_type)
            return [decode(message) for message in messages]
        return [_decoded(message) for message in messages]


_ANY = decoder_for(Any)


def _decoded(message: Message) -> Any:
    """The body as published: str for text, bytes for bytes; a body not JSON stays bytes."""
    try:
        return _ANY(message)
    except (pydantic.ValidationError, UnicodeDecodeError):
        return message.value
