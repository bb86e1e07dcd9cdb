"""The facts about dishka 1.10 the engine relies on; if one changes, this fails loudly.

Each test pins one internal that _resources.py, _graph.py, _hooks.py, _handlers.py,
_lifespan.py or _testing.py reads, by the import path they use.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from importlib.metadata import version
from typing import Annotated, Any, get_type_hints

import anyio
import pytest
from dishka import (
    AsyncContainer,
    DependencyKey,
    FromComponent,
    FromDishka,
    Marker,
    Provider,
    Scope,
    activate,
    alias,
    collect,
    from_context,
    make_async_container,
    provide,
)
from dishka.dependency_source import Factory
from dishka.entities.factory_type import FactoryType
from dishka.exception_base import DishkaError
from dishka.integrations.base import default_parse_dependency
from dishka.registry import Registry
from dishka.text_rendering import get_name


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


# --- _resources.py: the finalizer stack, the lock, close() ---------------------------------


Exit = tuple[Generator[Any, Any, Any] | None, AsyncGenerator[Any, Any] | None]


class _Recording(list[Exit]):
    """A list that notes each append, standing in for container._exits."""

    def __init__(self) -> None:
        super().__init__()
        self.appended = 0

    def append(self, item: Exit, /) -> None:
        self.appended += 1
        super().append(item)


async def test_finalizers_reach_a_replaced_exits_list_through_its_append() -> None:
    """A list subclass put in container._exits gets each finalizer by calling its append()."""
    container = make_async_container(Facts(), lock_factory=None)
    exits = _Recording()
    container._exits = exits
    await container.get(Fast)
    assert exits.appended == 2
    assert container._exits is exits
    await container.close()


async def test_close_after_the_exits_were_emptied_runs_nothing_and_raises_nothing() -> None:
    """close(exception) with an emptied _exits list finalizes nothing more, without error."""
    finalized: list[str] = []

    class Once(Provider):
        @provide(scope=Scope.APP)
        def slow(self) -> Iterator[Slow]:
            yield Slow()
            finalized.append("Slow")

    container = make_async_container(Once(), lock_factory=None)
    await container.get(Slow)
    container._exits.clear()
    await container.close(KeyError("the error that ended the lifespan"))
    assert finalized == []


async def test_closing_the_app_container_closes_its_runtime_parent() -> None:
    """One close() of the APP container runs the RUNTIME scope's finalizers too."""
    finalized: list[str] = []

    class Runtime(Provider):
        @provide(scope=Scope.RUNTIME)
        def slow(self) -> Iterator[Slow]:
            yield Slow()
            finalized.append("Slow")

    container = make_async_container(Runtime())
    await container.get(Slow)
    assert container._exits == []
    assert container.parent_container is not None
    assert len(container.parent_container._exits) == 1
    await container.close()
    assert finalized == ["Slow"]


async def test_without_a_lock_two_resources_are_created_concurrently() -> None:
    """lock_factory=None: two gets run at once (each waits for the other to have begun)."""
    both = anyio.Event()
    begun: list[str] = []

    async def begin(name: str) -> None:
        begun.append(name)
        if len(begun) == 2:
            both.set()
        await both.wait()

    class Pair(Provider):
        @provide(scope=Scope.APP)
        async def slow(self) -> Slow:
            await begin("Slow")
            return Slow()

        @provide(scope=Scope.APP)
        async def fast(self) -> Fast:
            await begin("Fast")
            return Fast()

    container = make_async_container(Pair(), lock_factory=None)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(container.get, Slow)
            group.start_soon(container.get, Fast)
    assert sorted(begun) == ["Fast", "Slow"]
    await container.close()


# --- _graph.py: registries, factory types, dependencies --------------------------------------


class Backend:
    """Two variants, chosen by a marker."""


class Plugin:
    """Gathered by collect()."""


class Base:
    """An alias of Slow."""


class Development(Marker):
    """Turns the fake Backend on."""


class Shapes(Provider):
    """One of each declaration the resource graph reads."""

    slow_value = provide(Slow, scope=Scope.APP)
    number = from_context(provides=int, scope=Scope.APP)
    base = alias(source=Slow, provides=Base)
    plugins = collect(Plugin, scope=Scope.APP)

    @provide(scope=Scope.APP)
    async def fast(self, slow: Slow) -> Fast:
        return Fast()

    @provide(scope=Scope.APP)
    def real(self) -> Iterator[Backend]:
        yield Backend()

    @provide(scope=Scope.APP, when=Development("on"))
    async def fake(self) -> AsyncIterator[Backend]:
        yield Backend()

    @activate(Development("on"))
    def development(self, slow: Slow) -> bool:
        return True

    @provide(scope=Scope.APP)
    def first(self) -> Plugin:
        return Plugin()

    @provide(scope=Scope.APP)
    def second(self) -> Plugin:
        return Plugin()


def shapes() -> dict[DependencyKey, Factory]:
    """The APP registry's factories of a container built from Shapes."""
    container = make_async_container(Shapes(), context={int: 1})
    registry: Registry = container.registry
    return registry.factories


def test_each_declaration_has_the_factory_type_the_graph_expects() -> None:
    """Plain, async, generator, context, alias, when= and collect() map to these FactoryTypes."""
    factories = shapes()
    by_key = {(key.type_hint, key.depth): factory.type for key, factory in factories.items()}
    assert by_key[(Slow, 0)] is FactoryType.FACTORY
    assert by_key[(Fast, 0)] is FactoryType.ASYNC_FACTORY
    assert by_key[(int, 0)] is FactoryType.CONTEXT
    assert by_key[(Base, 0)] is FactoryType.ALIAS
    assert by_key[(Backend, 0)] is FactoryType.SELECTOR
    assert {by_key[(Backend, 1)], by_key[(Backend, 2)]} == {
        FactoryType.GENERATOR,
        FactoryType.ASYNC_GENERATOR,
    }
    assert by_key[(list[Plugin], 0)] is FactoryType.COLLECTION
    assert {member.name for member in FactoryType} >= {"VALUE", "ALIAS", "CONTEXT"}


def test_selectors_and_collections_list_their_variants_as_when_dependencies() -> None:
    """A when= selector and a collect() name their variants (depth > 0) in when_dependencies."""
    factories = shapes()
    selector = factories[DependencyKey(Backend, "")]
    collection = factories[DependencyKey(list[Plugin], "")]
    assert not selector.cache  # the selector is not cached; its variants are
    assert sorted(v.provides.depth for v in selector.when_dependencies) == [1, 2]
    assert all(v.provides.type_hint is Backend for v in selector.when_dependencies)
    assert sorted(v.provides.depth for v in collection.when_dependencies) == [1, 2]
    assert all(factories[v.provides].cache for v in selector.when_dependencies)


def test_collect_deps_lists_arguments_variants_and_activation_markers() -> None:
    """registry.collect_deps(factory, activation_only=False) covers every way to need a key."""
    container = make_async_container(Shapes(), context={int: 1})
    registry: Registry = container.registry
    fast = registry.factories[DependencyKey(Fast, "")]
    selector = registry.factories[DependencyKey(Backend, "")]
    assert registry.collect_deps(fast, activation_only=False) == [DependencyKey(Slow, "")]
    needed = registry.collect_deps(selector, activation_only=False)
    assert {key.depth for key in needed if key.type_hint is Backend} == {1, 2}
    markers = [key for key in needed if key.is_marker()]
    assert [key.type_hint for key in markers] == [Development("on")]
    marker_factory = registry.factories[markers[0]]
    assert registry.collect_deps(marker_factory, activation_only=False) == [DependencyKey(Slow, "")]


def test_registries_chain_from_runtime_through_app_to_the_request_scopes() -> None:
    """parent_container and child_registry link the scopes' registries in order."""
    container = make_async_container(Shapes(), context={int: 1})
    assert container.parent_container is not None
    runtime: Registry = container.parent_container.registry
    assert runtime.scope is Scope.RUNTIME
    assert runtime.child_registry is container.registry
    assert container.parent_container.parent_container is None
    scopes = []
    registry: Registry | None = runtime
    while registry is not None:
        scopes.append(registry.scope)
        registry = registry.child_registry
    assert scopes[:4] == [Scope.RUNTIME, Scope.APP, Scope.SESSION, Scope.REQUEST]
    assert DependencyKey(AsyncContainer, "") in container.registry.factories


def test_type_names_are_rendered_without_their_module() -> None:
    """text_rendering.get_name(hint, include_module=False) gives the bare name, generics too."""
    assert get_name(Slow, include_module=False) == "Slow"
    assert get_name(list[Plugin], include_module=False) == "list[Plugin]"


def test_an_invalid_graph_is_refused_when_the_container_is_built() -> None:
    """make_async_container raises a DishkaError for a missing factory, before any get()."""

    class Missing(Provider):
        @provide(scope=Scope.APP)
        def fast(self, backend: Backend) -> Fast:
            return Fast()  # pragma: no cover - never built

    with pytest.raises(DishkaError, match="Backend"):
        make_async_container(Missing())


def test_a_later_provider_replaces_an_earlier_one_for_the_same_type() -> None:
    """Two providers of one type: the later one's factory is the one registered (overrides)."""

    class Later(Provider):
        @provide(scope=Scope.APP)
        def slow(self) -> Iterator[Slow]:
            yield Slow()

    container = make_async_container(Facts(), Later())
    factory = container.registry.factories[DependencyKey(Slow, "")]
    assert factory.type is FactoryType.GENERATOR  # Facts gives an async generator


# --- _hooks.py and _handlers.py: reading signatures, the REQUEST scope ---------------------


def test_default_parse_dependency_finds_fromdishka_parameters_only() -> None:
    """FromDishka[T] and Annotated[T, FromComponent(c)] give keys; a plain parameter gives None."""

    def handler(
        slow: FromDishka[Slow], body: bytes, fast: Annotated[Fast, FromComponent("x")]
    ) -> None: ...

    hints = get_type_hints(handler, include_extras=True)
    keys = {
        name: default_parse_dependency(parameter, hints[name])
        for name, parameter in inspect.signature(handler).parameters.items()
    }
    assert keys == {
        "slow": DependencyKey(Slow, ""),
        "body": None,
        "fast": DependencyKey(Fast, "x"),
    }


class Trace:
    """A REQUEST-scoped value made from the request's context."""

    def __init__(self, label: str) -> None:
        self.label = label


async def test_calling_the_container_with_context_opens_the_request_scope() -> None:
    """container(context={Type: value}) is an async context manager for a REQUEST container."""

    class Request(Provider):
        label = from_context(provides=str, scope=Scope.REQUEST)

        @provide(scope=Scope.REQUEST)
        def trace(self, label: str, slow: Slow) -> Trace:
            return Trace(label)

    container = make_async_container(Facts(), Request())
    async with container(context={str: "t-1"}) as request:
        assert request.registry.scope is Scope.REQUEST
        assert (await request.get(Trace)).label == "t-1"
    await container.close()


# --- _testing.py and _lifespan.py: what a provider declares, providers built in code ---------


def test_a_provider_lists_its_factories_context_values_and_aliases_with_scopes() -> None:
    """provider.factories/context_vars/aliases carry .provides keys, factories their scope."""
    provider = Shapes()
    assert provider.scope is None
    assert provider.component == ""
    factories = {source.provides.type_hint: source.scope for source in provider.factories}
    assert factories[Fast] is Scope.APP
    assert [(s.provides.type_hint, s.scope) for s in provider.context_vars] == [(int, Scope.APP)]
    (base,) = provider.aliases
    assert base.provides.type_hint is Base
    assert base.provides.component is None  # filled in from the provider when registered


async def test_providers_built_in_code_give_values_and_context_by_type() -> None:
    """Provider(scope=...).provide(func, provides=T) and .from_context(provides=T) register T."""
    provider = Provider(scope=Scope.APP, component="fake")
    fixed = Slow()
    provider.provide(lambda: fixed, provides=Slow)
    context = Provider()
    context.from_context(provides=int, scope=Scope.APP)
    container = make_async_container(provider, context, context={int: 7})
    assert await container.get(Slow, component="fake") is fixed
    assert await container.get(int) == 7
    await container.close()


class Fetched:
    """A resource another provider fetches through the container it is injected."""


class Fetching:
    """A resource whose provider takes the container itself."""

    def __init__(self, container: AsyncContainer) -> None:
        self.container = container


class ThroughTheContainer(Provider):
    fetched = provide(Fetched, scope=Scope.APP)

    @provide(scope=Scope.APP)
    async def fetching(self, container: AsyncContainer) -> Fetching:
        await container.get(Fetched)
        return Fetching(container)


async def test_an_injected_container_is_the_container_and_its_get_is_looked_up_on_its_class() -> (
    None
):
    """_resources swaps the containers' class for one whose get() waits; dishka must allow it."""
    calls: list[object] = []

    class Watching(AsyncContainer):
        __slots__ = ()

        async def get(self, dependency_type: Any, component: Any = "") -> Any:
            calls.append(dependency_type)
            return await super().get(dependency_type, component)

    container = make_async_container(ThroughTheContainer(), lock_factory=None)
    container.__class__ = Watching
    fetching = await container.get(Fetching)
    assert fetching.container is container
    assert calls == [Fetching, Fetched]  # the provider's own get() goes through the class


async def test_the_app_and_runtime_containers_share_the_context_dict_given() -> None:
    """_resources puts its gate in the context dict both long-lived containers read."""
    context: dict[Any, Any] = {}
    container = make_async_container(ThroughTheContainer(), context=context, lock_factory=None)
    parent = container.parent_container
    assert parent is not None
    assert container._context is context
    assert parent._context is context
