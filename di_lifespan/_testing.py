"""The test client: the app's whole lifespan on a fresh memory broker, with resources swapped.

``TestClient(app, overrides=[...])`` starts the app as ``async with app`` would — hooks,
eager resources, handlers — but on its own ``MemoryBroker`` and with the override providers
placed after the app's, so their factories replace the app's for the same types. The app
object is left as it was: the next test starts it again with other overrides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, overload

import anyio
import pydantic
from dishka import AsyncContainer, BaseScope, DependencyKey, Provider, Scope
from dishka.provider import BaseProvider

from ._app import App
from ._codec import decoder_for
from ._errors import ConfigurationError
from ._graph import key_name
from ._memory import MemoryBroker
from ._message import Headers, Message

__all__ = ["Override", "TestClient", "override"]

T = TypeVar("T")
DEFAULT_SETTLE_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Override:
    """A plain value that replaces whatever the app provides for ``type_``."""

    type_: Any
    value: Any
    component: str = ""


def override(type_: type[T] | Any, value: T, *, component: str = "") -> Override:
    """Replace the app's ``type_`` with ``value`` in a test (at the scope the app gives it)."""
    return Override(type_, value, component)


class TestClient:
    """Runs an app's whole lifespan in a test, on an in-memory broker.

    ``overrides`` are dishka providers, or ``override(Type, value)``; each type they provide
    must be one the app provides, and replaces it (its real setup never runs). ``context``
    adds values to the app's ``context=``. With ``raise_handler_errors`` (the default) a
    handler's exception is raised by the ``publish`` that caused it; set it to False to let
    the delivery policy work (retries, then the dead-letter topic) and assert on that.
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
        partitions: int = 1,
    ) -> None:
        if not isinstance(app, App):
            raise ConfigurationError("TestClient(app)", f"expected a di_lifespan App, got {app!r}")
        for position, item in enumerate(overrides, start=1):
            if not isinstance(item, BaseProvider | Override):
                raise ConfigurationError(
                    f"TestClient(overrides=...) item {position}",
                    f"expected a dishka Provider or override(Type, value), got {item!r}",
                )
        self.app = app
        self.broker = MemoryBroker(partitions=partitions)
        self._overrides = tuple(overrides)
        self._context = dict(context or {})
        self._raise_handler_errors = raise_handler_errors
        self._settle_timeout = settle_timeout
        self._errors: list[BaseException] = []

    async def __aenter__(self) -> TestClient:
        plan = self.app._plan()  # noqa: SLF001  # the testing kit is part of the package
        overrides = _resolve_overrides(self._overrides, plan.providers)
        await self.app._start(  # noqa: SLF001  # same
            dataclasses.replace(
                plan,
                providers=[*plan.providers, *overrides],
                context={**plan.context, **self._context},
                broker=self.broker,
                report_error=self._errors.append if self._raise_handler_errors else None,
            ),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.app.__aexit__(exc_type, exc, traceback)

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
        """Wait until every subscribed group has handled and committed every message."""
        with anyio.move_on_after(self._settle_timeout) as deadline:
            while self.broker.pending():
                await self.broker.wait_for_change()
        if deadline.cancelled_caught:
            raise TimeoutError(
                f"{self.broker.pending()} message(s) still not handled after"
                f" {self._settle_timeout:g} s (TestClient(settle_timeout=...))",
            )
        if self._errors:
            error, *_ = self._errors
            self._errors.clear()
            raise error

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


def _resolve_overrides(
    overrides: Iterable[BaseProvider | Override],
    app_providers: Sequence[BaseProvider],
) -> list[BaseProvider]:
    """Check that each override replaces something the app has; turn values into providers."""
    provided = _provided_scopes(app_providers)
    resolved: list[BaseProvider] = []
    for item in overrides:
        if isinstance(item, Override):
            key = DependencyKey(item.type_, item.component)
            _require(provided, key, f"override({key_name(key)}, ...)")
            resolved.append(_value_provider(item, provided[key]))
        else:
            for key in _provided_scopes([item]):
                _require(provided, key, f"override provider {type(item).__name__}")
            resolved.append(item)
    return resolved


def _require(provided: Mapping[DependencyKey, BaseScope], key: DependencyKey, where: str) -> None:
    if key not in provided:
        raise ConfigurationError(
            where,
            f"the app provides no {key_name(key)}, so there is nothing to override"
            " (add it to the app's providers, or fix the type)",
        )


def _provided_scopes(providers: Iterable[BaseProvider]) -> dict[DependencyKey, BaseScope]:
    """Every type the providers give, with its scope."""
    scopes: dict[DependencyKey, BaseScope] = {}
    for provider in providers:
        component = getattr(provider, "component", "") or ""
        default_scope = getattr(provider, "scope", None)
        sources: list[Any] = [*provider.factories, *provider.context_vars, *provider.aliases]
        for source in sources:
            provides: DependencyKey = source.provides
            key = DependencyKey(
                provides.type_hint,
                provides.component if provides.component is not None else component,
            )
            scope = getattr(source, "scope", None) or default_scope or Scope.APP
            scopes[key] = scope
    return scopes


def _value_provider(item: Override, scope: BaseScope) -> Provider:
    provider = Provider(scope=scope, component=item.component)
    value = item.value
    provider.provide(lambda: value, provides=item.type_)
    return provider
