"""The app-scoped resources of a dishka container and what each one needs first.

dishka builds and validates the graph; this module only reads its registries
(``registry.factories``) to learn which factories are long-lived resources to create
eagerly, and in which order they may be created concurrently.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from dishka import AsyncContainer, BaseScope, DependencyKey, Scope
from dishka.dependency_source import Factory
from dishka.entities.factory_type import FactoryType
from dishka.registry import Registry
from dishka.text_rendering import get_name

__all__ = ["ResourceGraph", "ResourceNode", "key_name", "scope_of"]

# Factory types whose result is a resource worth creating at startup. VALUE has nothing to
# set up, CONTEXT comes from outside, ALIAS only points at another factory.
_EAGER_TYPES = frozenset(
    {
        FactoryType.FACTORY,
        FactoryType.ASYNC_FACTORY,
        FactoryType.GENERATOR,
        FactoryType.ASYNC_GENERATOR,
        FactoryType.SELECTOR,
        FactoryType.COLLECTION,
    },
)
_DISPATCHERS = frozenset({FactoryType.SELECTOR, FactoryType.COLLECTION})
_LONG_LIVED_SCOPES = (Scope.RUNTIME, Scope.APP)


def key_name(key: DependencyKey) -> str:
    """The name a person knows a dependency by: its type, and its component if any."""
    name = get_name(key.type_hint, include_module=False)
    return f"{name} (component {key.component!r})" if key.component else name


@dataclass(frozen=True, slots=True)
class ResourceNode:
    """One long-lived resource and the resources that must exist before it is created."""

    key: DependencyKey
    name: str
    requires: frozenset[DependencyKey]


class ResourceGraph:
    """The long-lived resources of a container, in a dependency order.

    A node is a cached factory of RUNTIME or APP scope. Aliases, decorated originals,
    ``when=`` variants and activation markers are not nodes of their own: they are created
    inside the node that reaches them, so that each factory is created exactly once.
    """

    def __init__(
        self,
        container: AsyncContainer,
        roots: Mapping[str, Iterable[DependencyKey]] | None = None,
    ) -> None:
        self._registry: Registry = container.registry
        self._factories = _long_lived_factories(container)
        variants = {
            variant.provides
            for factory in self._factories.values()
            for variant in factory.when_dependencies
        }
        node_keys = [
            key for key, factory in self._factories.items() if _is_node(key, factory, variants)
        ]
        self._node_keys = frozenset(node_keys)
        requires = {key: self._reachable_nodes(key) for key in node_keys}
        self._serialize_shared_inner(requires)
        self.nodes: dict[DependencyKey, ResourceNode] = {
            key: ResourceNode(key, key_name(key), frozenset(requires[key][0]))
            for key in _dependency_order(node_keys, {k: v[0] for k, v in requires.items()})
        }
        self._dependents: dict[DependencyKey, list[DependencyKey]] = {k: [] for k in self.nodes}
        for node in self.nodes.values():
            for needed in sorted(node.requires, key=list(self.nodes).index):
                self._dependents[needed].append(node.key)
        # What uses the resources from outside the graph (handlers), to name in paths.
        self._users: dict[DependencyKey, list[str]] = {}
        for user, keys in (roots or {}).items():
            for key in keys:
                for node_key in self.nodes_for(key):
                    self._users.setdefault(node_key, []).append(user)

    def provides(self, key: DependencyKey) -> bool:
        """Whether a RUNTIME or APP factory gives this key."""
        return key in self._factories

    def nodes_for(self, key: DependencyKey) -> frozenset[DependencyKey]:
        """The nodes that must be created before ``key`` can be resolved without side effects."""
        if key in self._node_keys:
            return frozenset({key})
        return frozenset(self._reachable_nodes(key)[0])

    def path_to(self, key: DependencyKey) -> tuple[str, ...]:
        """The chain of resources that needed ``key``, outermost first, ending with ``key``."""
        chain = [key]
        while dependents := self._dependents.get(chain[-1]):
            chain.append(dependents[0])
        names = [self.nodes[k].name for k in reversed(chain)]
        users = self._users.get(chain[-1])
        return (users[0], *names) if users else tuple(names)

    def _reachable_nodes(
        self,
        start: DependencyKey,
    ) -> tuple[set[DependencyKey], set[DependencyKey]]:
        """Nodes reached from ``start`` through non-node factories, and those cached factories."""
        nodes: set[DependencyKey] = set()
        inner: set[DependencyKey] = set()
        stack = list(self._direct_dependencies(start))
        seen = set(stack)
        while stack:
            key = stack.pop()
            if key in self._node_keys:
                nodes.add(key)
                continue
            factory = self._factories.get(key)
            if factory is None:
                continue  # a context value, a constant, or the container itself
            if factory.cache and factory.type is not FactoryType.CONTEXT:
                inner.add(key)
            for dependency in self._direct_dependencies(key):
                if dependency not in seen:
                    seen.add(dependency)
                    stack.append(dependency)
        return nodes, inner

    def _direct_dependencies(self, key: DependencyKey) -> Iterator[DependencyKey]:
        factory = self._factories.get(key)
        if factory is not None:
            # collect_deps lists arguments, when= variants and activation markers alike.
            yield from self._registry.collect_deps(factory, activation_only=False)

    def _serialize_shared_inner(
        self,
        requires: dict[DependencyKey, tuple[set[DependencyKey], set[DependencyKey]]],
    ) -> None:
        """Order the nodes that share a cached inner factory, so it is never created twice."""
        order = _dependency_order(list(requires), {k: v[0] for k, v in requires.items()})
        owners: dict[DependencyKey, list[DependencyKey]] = {}
        for key in order:
            for inner_key in requires[key][1]:
                owners.setdefault(inner_key, []).append(key)
        for sharing in owners.values():
            for earlier, later in itertools.pairwise(sharing):
                requires[later][0].add(earlier)


def _long_lived_factories(container: AsyncContainer) -> dict[DependencyKey, Factory]:
    factories: dict[DependencyKey, Factory] = {}
    current: AsyncContainer | None = container
    while current is not None:
        registry: Registry = current.registry
        if registry.scope in _LONG_LIVED_SCOPES:
            for key, factory in registry.factories.items():
                factories.setdefault(key, factory)
        current = current.parent_container
    return factories


def _is_node(key: DependencyKey, factory: Factory, variants: set[DependencyKey]) -> bool:
    # A selector or collection is not cached itself, but creates (and caches) its variants.
    return (
        factory.type in _EAGER_TYPES
        and (factory.cache or factory.type in _DISPATCHERS)
        and key.depth == 0
        and not key.is_marker()
        and key not in variants
    )


def _dependency_order(
    keys: Iterable[DependencyKey],
    requires: dict[DependencyKey, set[DependencyKey]],
) -> list[DependencyKey]:
    """Keys sorted so that each comes after what it requires, ties in registration order."""
    ordered: list[DependencyKey] = []
    placed: set[DependencyKey] = set()
    pending = list(keys)
    while pending:
        ready = [key for key in pending if requires[key] <= placed]
        if not ready:  # dishka rejects cycles when it builds the graph
            ready = pending[:1]
        for key in ready:
            ordered.append(key)
            placed.add(key)
        pending = [key for key in pending if key not in placed]
    return ordered


def scope_of(container: AsyncContainer, key: DependencyKey) -> BaseScope | None:
    """The scope whose registry provides ``key``, looking at every scope; None if none does."""
    registry: Registry | None = _root(container).registry
    while registry is not None:
        if key in registry.factories:
            return registry.scope
        registry = registry.child_registry
    return None


def _root(container: AsyncContainer) -> AsyncContainer:
    while container.parent_container is not None:
        container = container.parent_container
    return container
