"""Checks of ``App()`` arguments against one another, made before anything starts.

What the providers give (by type and scope) is read from the dishka providers themselves, so
``context=`` keys that a provider also gives, and test overrides of types the app lacks, are
caught when the app or the test client is made.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NewType, get_origin

from dishka import BaseScope, DependencyKey, Scope
from dishka.provider import BaseProvider

from ._delivery import Publisher
from ._errors import ConfigurationError
from ._graph import key_name
from ._hooks import function_name
from ._message import Message

__all__ = [
    "FRAMEWORK_TYPES",
    "LifespanFactory",
    "Provided",
    "check_context",
    "lifespan_factory",
    "provided",
    "provided_scopes",
]

LifespanFactory = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]

# What the app itself provides to every container (see _lifespan's framework provider).
FRAMEWORK_TYPES: Mapping[DependencyKey, BaseScope] = {
    DependencyKey(Publisher, ""): Scope.APP,
    DependencyKey(Message, ""): Scope.REQUEST,
}


@dataclass(frozen=True, slots=True)
class Provided:
    """One type a provider gives: at which scope, from which provider, and whether as context."""

    scope: BaseScope
    provider: BaseProvider
    from_context: bool


def provided(providers: Iterable[BaseProvider]) -> dict[DependencyKey, Provided]:
    """Every type the providers give; a later provider wins, as in dishka."""
    found: dict[DependencyKey, Provided] = {}
    for provider in providers:
        component = getattr(provider, "component", "") or ""
        default_scope = getattr(provider, "scope", None)
        sources: list[tuple[Any, bool]] = [
            *((source, False) for source in provider.factories),
            *((source, True) for source in provider.context_vars),
            *((source, False) for source in provider.aliases),
        ]
        for source, is_context in sources:
            provides: DependencyKey = source.provides
            key = DependencyKey(
                provides.type_hint,
                provides.component if provides.component is not None else component,
            )
            scope = getattr(source, "scope", None) or default_scope or Scope.APP
            found[key] = Provided(scope, provider, is_context)
    return found


def provided_scopes(providers: Iterable[BaseProvider]) -> dict[DependencyKey, BaseScope]:
    """Every type the providers give, with its scope."""
    return {key: item.scope for key, item in provided(providers).items()}


def check_context(
    context: Mapping[Any, Any],
    providers: Iterable[BaseProvider],
    settings: type[Any] | None,
) -> None:
    """Refuse ``context=`` keys that are not types, or that something else already provides.

    A type a provider declares with ``from_context`` is what ``context=`` is for: not a clash.
    """
    given = provided(providers)
    for key, value in context.items():
        if not _is_type_hint(key):
            raise ConfigurationError("App(context=...)", _not_a_type(key, value))
        dependency = DependencyKey(key, "")
        name = key_name(dependency)
        if dependency in FRAMEWORK_TYPES:
            raise ConfigurationError(
                "App(context=...)",
                f"{name} is provided by the app itself; drop it from context="
                " (in tests, replace it with di_lifespan.testing.override)",
            )
        if key is settings:
            raise ConfigurationError(
                "App(context=...)",
                f"{name} is also given by settings=; pass it in one place only",
            )
        item = given.get(dependency)
        if item is not None and not item.from_context:
            raise ConfigurationError(
                "App(context=...)",
                f"{name} is also given by provider {type(item.provider).__name__}; a type comes"
                " from one place: drop it from context= or from the provider"
                " (in tests, replace it with TestClient overrides)",
            )


def _is_type_hint(key: object) -> bool:
    return isinstance(key, type | NewType) or get_origin(key) is not None


def _not_a_type(key: object, value: object) -> str:
    example = type(value).__name__
    if isinstance(key, str):
        return (
            f"key {key!r} is a name, but values are injected by type, not by name (unlike"
            f" Propan's context): write context={{{example}: ...}} and ask for"
            f" FromDishka[{example}]; for two values of one type, give each its own class"
            " or NewType"
        )
    return f"key {key!r} is not a type; write context={{{example}: ...}}"


def lifespan_factory(lifespan: object) -> LifespanFactory | None:
    """The ``lifespan=`` argument as a function of the app returning an async context manager.

    A bare async generator function is accepted, as starlette accepts it; anything that cannot
    become a context manager is refused now, with what to write instead.
    """
    where = "App(lifespan=...)"
    if lifespan is None:
        return None
    if isinstance(lifespan, contextlib.AbstractAsyncContextManager):
        raise ConfigurationError(
            where,
            "got a context manager; pass the function that makes it (lifespan=func, not"
            " lifespan=func(app)): the app calls it at each start",
        )
    if not callable(lifespan):
        raise ConfigurationError(where, f"expected a callable, got {lifespan!r}")
    name = function_name(lifespan)
    if inspect.isasyncgenfunction(lifespan):
        return contextlib.asynccontextmanager(lifespan)
    if inspect.isgeneratorfunction(lifespan):
        raise ConfigurationError(
            where,
            f"{name} is a sync generator function; make it `async def` (an async generator"
            " that yields once is accepted as it is)",
        )
    if inspect.iscoroutinefunction(lifespan):
        raise ConfigurationError(
            where,
            f"{name} is an async function, not a context manager: yield once inside it"
            " (setup before the yield, teardown after) to make it an async generator",
        )
    return _checked_factory(lifespan, name)


def _checked_factory(factory: Callable[[Any], Any], name: str) -> LifespanFactory:
    def make(app: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        manager = factory(app)
        if not (hasattr(manager, "__aenter__") and hasattr(manager, "__aexit__")):
            raise ConfigurationError(
                "App(lifespan=...)",
                f"{name}(app) returned {type(manager).__name__}, not an async context manager"
                " (decorate it with @contextlib.asynccontextmanager)",
            )
        return manager  # type: ignore[no-any-return]  # checked just above

    return make
