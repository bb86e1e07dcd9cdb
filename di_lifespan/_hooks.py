"""Lifespan hooks: plain functions, sync or async, that may take ``FromDishka[...]`` parameters.

Hooks and handlers may also be ``functools.partial`` objects or objects with a ``__call__``
method: their parameters are read through the function underneath.

A hook's plain parameters with a default (not ``FromDishka[...]``) are its options: a run
given options by name (``di-lifespan run ... --env .env.test``) passes each hook the ones its
parameters name, converted to the parameter's annotation.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from dishka import AsyncContainer, DependencyKey
from dishka.integrations.base import default_parse_dependency
from pydantic import TypeAdapter, ValidationError

from ._errors import ConfigurationError

__all__ = [
    "Hook",
    "function_name",
    "injected_parameters",
    "is_async_callable",
    "open_parameters",
    "option_parameters",
]


def open_parameters(
    func: Callable[..., Any], where: str
) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """The parameters a call of ``func`` still has to fill, and their resolved annotations.

    For a ``functools.partial`` the arguments it already binds are left out; for an object
    with ``__call__`` the annotations are those of that method.
    """
    target, bound = _underlying(func)
    try:
        parameters = inspect.signature(func).parameters
        hints = get_type_hints(target, include_extras=True)
    except (NameError, TypeError, ValueError) as error:
        raise ConfigurationError(where, f"cannot read its signature: {error}") from error
    return {name: value for name, value in parameters.items() if name not in bound}, hints


def is_async_callable(func: Callable[..., Any]) -> bool:
    """Whether calling ``func`` returns a coroutine.

    True for an async function, a partial of one, and an object whose ``__call__`` is async.
    """
    target, _ = _underlying(func)
    return inspect.iscoroutinefunction(target)


def _underlying(func: Callable[..., Any]) -> tuple[Callable[..., Any], frozenset[str]]:
    """The function whose code runs when ``func`` is called, and the keywords partials bind."""
    bound: set[str] = set()
    while isinstance(func, functools.partial):
        bound.update(func.keywords)
        func = func.func
    if not (inspect.isroutine(func) or isinstance(func, type)):
        func = type(func).__call__  # a callable object: its method (``self`` is not a hint)
    return func, frozenset(bound)


def injected_parameters(func: Callable[..., Any], where: str) -> dict[str, DependencyKey]:
    """The ``FromDishka[...]`` parameters of ``func``, by name.

    Raises ConfigurationError, naming ``where`` and the parameter, for a parameter that is
    neither injected nor optional, or for annotations that cannot be read.
    """
    parameters, hints = open_parameters(func, where)
    injected: dict[str, DependencyKey] = {}
    for name, parameter in parameters.items():
        key = default_parse_dependency(parameter, hints.get(name, parameter.annotation))
        if key is not None:
            injected[name] = key
        elif parameter.default is inspect.Parameter.empty and parameter.kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            raise ConfigurationError(
                where,
                f"parameter {name!r} is not FromDishka[...] and has no default",
            )
    return injected


def option_parameters(func: Callable[..., Any], where: str) -> dict[str, Any]:
    """The plain parameters of ``func`` that have a default, by name, with their annotations.

    These are what options given by name fill (``Any`` when a parameter has no annotation).
    """
    parameters, hints = open_parameters(func, where)
    return {
        name: hints.get(name, Any)
        for name, parameter in parameters.items()
        if parameter.default is not inspect.Parameter.empty
        and parameter.kind
        not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY)
        and default_parse_dependency(parameter, hints.get(name, parameter.annotation)) is None
    }


@dataclass(frozen=True, slots=True)
class Hook:
    """One registered hook: the function, where it runs, what it asks to be injected.

    ``options`` are its plain parameters with a default, which options given by name fill.
    """

    func: Callable[..., Any]
    stage: str
    dependencies: dict[str, DependencyKey]
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, func: Callable[..., Any], stage: str) -> Hook:
        if not callable(func):
            raise ConfigurationError(f"app.{stage}", f"expected a function, got {func!r}")
        where = f"{stage} hook {function_name(func)}"
        return cls(func, stage, injected_parameters(func, where), option_parameters(func, where))

    @property
    def name(self) -> str:
        return f"{self.stage} hook {function_name(self.func)}"

    def with_options(self, values: Mapping[str, Any]) -> Hook:
        """The hook with the ``values`` its option parameters name bound to them.

        A value is converted to the parameter's annotation (``"8080"`` to an ``int``, say);
        raises ConfigurationError naming the hook and the option when it does not convert.
        """
        given = {name: values[name] for name in self.options if name in values}
        if not given:
            return self
        bound: dict[str, Any] = {}
        for name, value in given.items():
            hint = self.options[name]
            try:
                bound[name] = value if hint is Any else TypeAdapter(hint).validate_python(value)
            except ValidationError as error:
                problems = "; ".join(item["msg"] for item in error.errors(include_url=False))
                raise ConfigurationError(
                    self.name, f"option {name}={value!r}: {problems}"
                ) from error
        return Hook(
            functools.partial(self.func, **bound), self.stage, self.dependencies, self.options
        )

    async def call(self, container: AsyncContainer) -> None:
        arguments = {
            name: await container.get(key.type_hint, key.component)
            for name, key in self.dependencies.items()
        }
        result = self.func(**arguments)
        if inspect.isawaitable(result):
            await result


def function_name(func: Callable[..., Any]) -> str:
    """How log lines and errors name a hook, handler or publisher: its qualified name.

    A partial is named after the function it wraps, a callable object after its class.
    """
    while isinstance(func, functools.partial):
        func = func.func
    name: str | None = getattr(func, "__qualname__", None)
    return name or type(func).__qualname__
