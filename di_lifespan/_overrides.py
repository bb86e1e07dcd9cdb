"""Test overrides: providers, or plain values, that replace what an app provides for a type.

An override must replace something the app has (a typo in a type is an error, not a silent
extra provider). Override providers are placed after the app's, so dishka lets their
factories win for the same types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import UnionType
from typing import TYPE_CHECKING, Any, Never, TypeVar

from dishka import BaseScope, DependencyKey, Provider, Scope
from dishka.provider import BaseProvider

from ._config import provided_scopes
from ._delivery import Publisher
from ._errors import ConfigurationError, excerpt
from ._graph import key_name

if TYPE_CHECKING:
    from typing import _SpecialForm  # what mypy calls Annotated[...], Optional[...] and the like

__all__ = ["Override", "check_overrides", "override", "resolve_overrides"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Override:
    """A plain value that replaces whatever the app provides for ``type_``."""

    type_: Any
    value: Any
    component: str = ""


def override(
    type_: type[T] | _SpecialForm | UnionType,
    value: T | Callable[[T], Never],
    *,
    component: str = "",
) -> Override:
    """Replace the app's ``type_`` with ``value`` in a test (at the scope the app gives it).

    Typed so that mypy checks ``value`` against ``type_``: it infers ``T`` from an argument
    whose declared type holds a callable only after the other arguments, so ``T`` comes from
    ``type_`` alone (a plain ``value: T`` would widen ``T`` to fit both, ``object`` at worst).
    The ``Callable[[T], Never]`` member is that marker; no real value is such a function. A
    special form (``Annotated[...]``, ``Optional[...]``) is accepted with a value of any type,
    and the union also keeps mypy from refusing an abstract class or a protocol as ``type_``.
    """
    _check_value(type_, value)
    return Override(type_, value, component)


def _check_value(type_: Any, value: Any) -> None:
    """Refuse a value that is plainly not a ``type_`` (mypy catches this too, tests at run time)."""
    if not isinstance(type_, type):
        return  # NewType, Annotated[...], a union: nothing isinstance() can check
    try:
        fits = isinstance(value, type_)
    except TypeError:
        return  # a Protocol that is not runtime-checkable
    if not fits:
        got = f"the class {value.__qualname__}" if isinstance(value, type) else excerpt(value)
        raise ConfigurationError(
            f"override({type_.__qualname__}, ...)",
            f"expected a {type_.__qualname__} instance, got {got}",
        )


def check_overrides(where: str, overrides: object) -> tuple[BaseProvider | Override, ...]:
    """``overrides`` as a tuple, or ConfigurationError naming what is wrong and where."""
    if isinstance(overrides, Override | BaseProvider):
        raise ConfigurationError(where, "expected a list of overrides: wrap it in [...]")
    if isinstance(overrides, Mapping):
        raise ConfigurationError(
            where, "expected a list, not a dict: write [override(Type, value), ...]"
        )
    if not isinstance(overrides, Iterable) or isinstance(overrides, str | bytes):
        raise ConfigurationError(where, f"expected a list of overrides, got {overrides!r}")
    items = tuple(overrides)
    for position, item in enumerate(items, start=1):
        if not isinstance(item, BaseProvider | Override):
            raise ConfigurationError(
                f"{where} item {position}",
                f"expected a dishka Provider or override(Type, value), got {excerpt(item)}",
            )
    return items


def resolve_overrides(
    overrides: Iterable[BaseProvider | Override],
    app_providers: Sequence[BaseProvider],
) -> list[BaseProvider]:
    """Check that each override replaces something the app has; turn values into providers.

    The app's own Publisher may be replaced too (a fake that records what handlers send).
    """
    provided = {**provided_scopes(app_providers), DependencyKey(Publisher, ""): Scope.APP}
    resolved: list[BaseProvider] = []
    for item in overrides:
        if isinstance(item, Override):
            key = DependencyKey(item.type_, item.component)
            _require(provided, key, f"override({key_name(key)}, ...)")
            resolved.append(_value_provider(item, provided[key]))
        else:
            for key in provided_scopes([item]):
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


def _value_provider(item: Override, scope: BaseScope) -> Provider:
    provider = Provider(scope=scope, component=item.component)
    value = item.value
    provider.provide(lambda: value, provides=item.type_)
    return provider
