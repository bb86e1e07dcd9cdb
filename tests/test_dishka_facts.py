"""The facts about dishka 1.10 the lifespan engine relies on; if one changes, this fails loudly."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator, Iterator
from importlib.metadata import version

from dishka import Provider, Scope, make_async_container, provide
from dishka.entities.factory_type import FactoryType


class Slow:
    """An async generator resource."""


class Fast:
    """A sync generator resource."""


class Facts(Provider):
    @provide(scope=Scope.APP)
    async def slow(self) -> AsyncIterator[Slow]:
        yield Slow()

    @provide(scope=Scope.APP)
    def fast(self, slow: Slow) -> Iterator[Fast]:
        yield Fast()


def test_the_tested_dishka_minor_version_is_installed() -> None:
    """Pyproject pins dishka to 1.10.x; the engine reads its internals."""
    assert version("dishka").startswith("1.10.")


def test_factories_are_read_from_the_registry_with_type_scope_and_dependencies() -> None:
    """registry.factories maps keys to factories with .type, .scope, .cache, .dependencies."""
    container = make_async_container(Facts())
    assert container.registry.scope is Scope.APP
    assert container.parent_container is not None
    assert container.parent_container.registry.scope is Scope.RUNTIME
    factories = {key.type_hint: f for key, f in container.registry.factories.items()}
    assert factories[Slow].type is FactoryType.ASYNC_GENERATOR
    assert factories[Fast].type is FactoryType.GENERATOR
    assert factories[Fast].scope is Scope.APP
    assert factories[Fast].cache
    assert [dep.type_hint for dep in factories[Fast].dependencies] == [Slow]


async def test_finalizers_are_the_exits_list_appended_when_setup_completes() -> None:
    """container._exits holds (generator, async_generator) pairs, in order of completed setup."""
    container = make_async_container(Facts(), lock_factory=None)
    assert container.lock is None
    assert container._exits == []
    await container.get(Fast)
    (slow_exit, fast_exit) = container._exits
    assert slow_exit[0] is None
    assert isinstance(slow_exit[1], types.AsyncGeneratorType)
    assert slow_exit[1].ag_code.co_qualname == "Facts.slow"
    assert fast_exit[1] is None
    assert isinstance(fast_exit[0], types.GeneratorType)
    assert fast_exit[0].gi_code.co_qualname == "Facts.fast"
    await container.close()
    assert container._exits == []


async def test_cached_dependencies_are_not_created_again() -> None:
    """Resolving a factory whose dependencies are cached creates only that factory."""
    created: list[str] = []

    class Counting(Provider):
        @provide(scope=Scope.APP)
        def slow(self) -> Slow:
            created.append("Slow")
            return Slow()

        @provide(scope=Scope.APP)
        def fast(self, slow: Slow) -> Fast:
            created.append("Fast")
            return Fast()

    container = make_async_container(Counting(), lock_factory=None)
    await container.get(Slow)
    await container.get(Fast)
    assert created == ["Slow", "Fast"]
