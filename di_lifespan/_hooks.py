"""Lifespan hooks: plain functions, sync or async, that may take ``FromDishka[...]`` parameters."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

from dishka import AsyncContainer, DependencyKey
from dishka.integrations.base import default_parse_dependency

from ._errors import ConfigurationError

__all__ = ["Hook", "function_name", "injected_parameters"]


def injected_parameters(func: Callable[..., Any], where: str) -> dict[str, DependencyKey]:
    """The ``FromDishka[...]`` parameters of ``func``, by name.

    Raises ConfigurationError, naming ``where`` and the parameter, for a parameter that is
    neither injected nor optional, or for annotations that cannot be read.
    """
    try:
        signature = inspect.signature(func)
        hints = get_type_hints(func, include_extras=True)
    except (NameError, TypeError, ValueError) as error:
        raise ConfigurationError(where, f"cannot read its signature: {error}") from error
    injected: dict[str, DependencyKey] = {}
    for name, parameter in signature.parameters.items():
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


@dataclass(frozen=True, slots=True)
class Hook:
    """One registered hook: the function, where it runs and what it asks to be injected."""

    func: Callable[..., Any]
    stage: str
    dependencies: dict[str, DependencyKey]

    @classmethod
    def parse(cls, func: Callable[..., Any], stage: str) -> Hook:
        if not callable(func):
            raise ConfigurationError(f"app.{stage}", f"expected a function, got {func!r}")
        where = f"{stage} hook {function_name(func)}"
        return cls(func, stage, injected_parameters(func, where))

    @property
    def name(self) -> str:
        return f"{self.stage} hook {function_name(self.func)}"

    async def call(self, container: AsyncContainer) -> None:
        arguments = {
            name: await container.get(key.type_hint, key.component)
            for name, key in self.dependencies.items()
        }
        result = self.func(**arguments)
        if inspect.isawaitable(result):
            await result


def function_name(func: Callable[..., Any]) -> str:
    """How log lines and errors name a hook, handler or publisher: its qualified name."""
    return getattr(func, "__qualname__", None) or repr(func)
