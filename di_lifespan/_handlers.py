"""Message handlers: what a handler's signature asks for, and the handler bound at startup.

A handler's parameters are read once, when it is registered: one body parameter (decoded per
its annotation and the message's content-type, see ``_codec``), ``Message`` by annotation,
and ``FromDishka[...]`` dependencies. At startup the cached APP-scoped dependencies are
resolved once and kept; per message only the body is decoded, ``cache=False`` APP
dependencies resolved again (as dishka would), a REQUEST scope opened when some dependency
needs one, and the function called.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import pydantic
from dishka import AsyncContainer, DependencyKey, Scope
from dishka.dependency_source import Factory
from dishka.entities.factory_type import FactoryType
from dishka.integrations.base import default_parse_dependency

from ._codec import Decoder, decoder_for
from ._errors import ConfigurationError, DependencyError, describe
from ._graph import ResourceGraph, key_name, scope_of
from ._hooks import function_name, is_async_callable, open_parameters
from ._message import Message

__all__ = ["BoundHandler", "HandlerSpec", "InvalidBodyError", "Retry", "Signature"]

_MESSAGE_CONTEXT = Message  # the REQUEST context key the app fills with the incoming message


class InvalidBodyError(Exception):
    """A message body that does not decode or validate; it is dead-lettered without retries."""

    def __init__(self, message: Message, reason: str) -> None:
        self.message = message
        self.reason = reason
        super().__init__(f"{message.coordinates} has an invalid body: {reason}")


@dataclass(frozen=True, slots=True)
class Retry:
    """How often a failing handler is tried in all, and the pause before each new attempt.

    The pause starts at ``backoff`` seconds and doubles each time, up to ``max_backoff``.
    """

    attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 10.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.attempts, bool)
            or not isinstance(self.attempts, int)
            or self.attempts < 1
        ):
            raise ConfigurationError(
                "Retry(attempts=...)", f"expected a whole number >= 1, got {self.attempts!r}"
            )
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigurationError(
                    f"Retry({name}=...)", f"expected a finite number of seconds >= 0, got {value!r}"
                )


@dataclass(frozen=True, slots=True)
class Signature:
    """What a handler's parameters ask for."""

    body: str | None
    decode: Decoder | None
    message: str | None
    dependencies: Mapping[str, DependencyKey]

    @classmethod
    def read(cls, func: Callable[..., Any], where: str) -> Signature:
        parameters, hints = open_parameters(func, where)
        body: list[str] = []
        message: str | None = None
        dependencies: dict[str, DependencyKey] = {}
        for name, parameter in parameters.items():
            hint = hints.get(name, Any)
            key = default_parse_dependency(parameter, hint)
            if key is not None:
                dependencies[name] = key
            elif hint is Message:
                message = name
            elif parameter.default is inspect.Parameter.empty:
                body.append(name)
        if len(body) > 1:
            raise ConfigurationError(
                where,
                f"parameters {', '.join(map(repr, body))} all look like the message body;"
                " mark dependencies FromDishka[...] so that one parameter is left for the body",
            )
        if not body:
            return cls(None, None, message, dependencies)
        return cls(body[0], decoder_for(hints.get(body[0], Any)), message, dependencies)


@dataclass(slots=True)
class HandlerSpec:
    """A registered handler: the function, where it reads from and where its result goes."""

    func: Callable[..., Any]
    topics: tuple[str, ...]
    group: str | None
    retry: Retry | None
    dead_letter: str | None
    max_concurrency: int
    signature: Signature
    publish_to: list[str] = field(default_factory=list)
    handler_timeout: float | None = None

    @property
    def name(self) -> str:
        return function_name(self.func)

    def bind(self, container: AsyncContainer, graph: ResourceGraph) -> Awaitable[BoundHandler]:
        return BoundHandler.create(self, container, graph)


class BoundHandler:
    """A handler ready for messages: its APP dependencies resolved, its call prepared."""

    __slots__ = (
        "_app_values",
        "_body",
        "_call",
        "_container",
        "_decode_json",
        "_decode_message",
        "_message",
        "_per_call",
        "_request",
        "spec",
    )

    def __init__(
        self,
        spec: HandlerSpec,
        container: AsyncContainer,
        app_values: dict[str, Any],
        request: dict[str, DependencyKey],
        per_call: Mapping[str, DependencyKey] | None = None,
    ) -> None:
        self.spec = spec
        self._container = container
        self._app_values = app_values
        # Uncached APP dependencies: made anew per message, from the APP container.
        self._per_call = tuple((per_call or {}).items())
        # In a REQUEST scope, every per-message lookup goes through it (it asks its parent).
        self._request = (*self._per_call, *request.items()) if request else ()
        self._body = spec.signature.body
        decode = spec.signature.decode
        self._decode_json = None if decode is None else decode.from_json
        self._decode_message = None if decode is None else decode.from_message
        self._message = spec.signature.message
        func = spec.func
        self._call: Callable[..., Awaitable[Any]] = (
            func if is_async_callable(func) else partial(_in_thread, func)
        )

    @classmethod
    async def create(
        cls,
        spec: HandlerSpec,
        container: AsyncContainer,
        graph: ResourceGraph,
    ) -> BoundHandler:
        """Resolve the cached APP dependencies once; the others are resolved per message.

        ``check`` has already made sure that every dependency is provided in some scope.
        """
        app_values: dict[str, Any] = {}
        per_call: dict[str, DependencyKey] = {}
        request: dict[str, DependencyKey] = {}
        for parameter, key in spec.signature.dependencies.items():
            if not graph.provides(key):
                request[parameter] = key
            elif _cached(container, key):
                app_values[parameter] = await container.get(key.type_hint, key.component)
            else:
                per_call[parameter] = key
        return cls(spec, container, app_values, request, per_call)

    @staticmethod
    def check(spec: HandlerSpec, container: AsyncContainer, graph: ResourceGraph) -> None:
        """Raise DependencyError for a dependency no provider gives in APP or REQUEST scope."""
        for parameter, key in spec.signature.dependencies.items():
            if graph.provides(key):
                continue
            scope = scope_of(container, key)
            if scope is None:
                raise DependencyError(
                    f"handler {spec.name}",
                    parameter,
                    f"asks for {key_name(key)}, which no provider gives",
                )
            if scope > Scope.REQUEST:
                raise DependencyError(
                    f"handler {spec.name}",
                    parameter,
                    f"asks for {key_name(key)}, which is provided at {scope.name} scope, deeper"
                    " than REQUEST; a handler gets APP and REQUEST resources only (provide it"
                    " at REQUEST scope)",
                )

    def __call__(self, message: Message) -> Awaitable[Any]:
        """Decode the body and inject; the awaitable returned runs the handler, gives its result.

        Raises InvalidBodyError at once for a body that does not validate. The handler's own
        coroutine is returned when nothing is resolved per message: no wrapper to await.
        """
        arguments = self._app_values.copy()
        if self._body is not None:
            try:
                # a body with no headers is JSON (or raw, per annotation): no content-type lookup
                arguments[self._body] = (
                    self._decode_message(message)  # type: ignore[misc]  # set with _body
                    if message.headers
                    else self._decode_json(message.value)  # type: ignore[misc]  # same
                )
            except (pydantic.ValidationError, UnicodeDecodeError) as error:
                raise InvalidBodyError(message, describe(error)) from error
        if self._message is not None:
            arguments[self._message] = message
        if self._request:
            return self._call_in_scope(message, arguments)
        if self._per_call:
            return self._call_with_per_call(arguments)
        return self._call(**arguments)

    async def _call_with_per_call(self, arguments: dict[str, Any]) -> Any:
        for parameter, key in self._per_call:
            arguments[parameter] = await self._container.get(key.type_hint, key.component)
        return await self._call(**arguments)

    async def _call_in_scope(self, message: Message, arguments: dict[str, Any]) -> Any:
        async with self._container(context={_MESSAGE_CONTEXT: message}) as request:
            for parameter, key in self._request:
                arguments[parameter] = await request.get(key.type_hint, key.component)
            return await self._call(**arguments)


def _cached(container: AsyncContainer, key: DependencyKey) -> bool:
    """Whether dishka keeps the first value of this long-lived key for the container's life.

    A ``when=`` selector is cached when every variant it chooses from is.
    """
    current: AsyncContainer | None = container
    while current is not None:
        factory: Factory | None = current.registry.factories.get(key)
        if factory is not None:
            return _factory_cached(factory)
        current = current.parent_container
    return True  # not a factory of ours to make: a context value of the container


def _factory_cached(factory: Factory) -> bool:
    if factory.type is FactoryType.CONTEXT:
        return True
    if factory.type is FactoryType.SELECTOR:
        return all(_factory_cached(variant) for variant in factory.when_dependencies)
    return bool(factory.cache)


async def _in_thread(func: Callable[..., Any], **arguments: Any) -> Any:
    """Run a sync handler in a worker thread, so it never blocks the event loop.

    A thread cannot be interrupted: cancelled (past the graceful timeout), the handler is
    abandoned, its result ignored and its message left uncommitted.
    """
    return await anyio.to_thread.run_sync(partial(func, **arguments), abandon_on_cancel=True)
