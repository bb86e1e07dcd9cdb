"""Eager, concurrent, time-limited creation of the long-lived resources, and their teardown.

dishka creates APP resources lazily, one at a time behind a lock, and its ``close()`` stops at
the first cancellation. Here every resource is created at startup, each as soon as what it
needs is ready, under its own time limit; at exit every finalizer runs in reverse creation
order, each under a time limit, whatever the others do.

Two facts of dishka 1.10 are relied on (``tests/test_dishka_facts.py`` pins them): the
container's finalizers are the list ``container._exits`` of ``(generator, async_generator)``
pairs, appended as each generator finishes its setup; and a container made with
``lock_factory=None`` resolves without a lock, which is safe because a resource is only
requested once everything it needs is cached.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import CodeType
from typing import Any, TypeAlias

import anyio
from dishka import AsyncContainer, DependencyKey

from ._errors import (
    ShutdownStepError,
    ShutdownTimeoutError,
    StartupError,
    StartupTimeoutError,
    describe,
)
from ._graph import ResourceGraph
from ._report import Outcome, ResourceStart, StartupReport

__all__ = ["Limits", "ResourceSet"]

logger = logging.getLogger("di_lifespan")

Exit: TypeAlias = tuple[Generator[Any, Any, Any] | None, AsyncGenerator[Any, Any] | None]

# The resource whose setup the current task is running; read when dishka records a finalizer.
_creating: ContextVar[str | None] = ContextVar("di_lifespan_creating", default=None)


@dataclass(frozen=True, slots=True)
class Limits:
    """Time limits in seconds: per resource setup, per finalizer, and per resource type."""

    startup: float
    shutdown: float
    per_resource: Mapping[DependencyKey, float]

    def startup_for(self, key: DependencyKey) -> float:
        return self.per_resource.get(key, self.startup)


class _OwnedExits(list[Exit]):
    """dishka's finalizer stack, noting which resource each finalizer belongs to."""

    def __init__(self, items: Iterable[Exit]) -> None:
        super().__init__(items)
        self.owners: dict[int, str] = {}

    def append(self, item: Exit, /) -> None:
        self.owners[id(item)] = _creating.get() or _provider_name(item)
        super().append(item)

    def pop_owned(self) -> tuple[Exit, str]:
        item = self.pop()
        return item, self.owners.pop(id(item), None) or _provider_name(item)


def _provider_name(item: Exit) -> str:
    generator, async_generator = item
    running = async_generator if async_generator is not None else generator
    code: CodeType | None = getattr(running, "ag_code", None) or getattr(running, "gi_code", None)
    return code.co_qualname if code is not None else repr(running)


def _containers(container: AsyncContainer) -> list[AsyncContainer]:
    """The container and its parents (the skipped RUNTIME scope), innermost first."""
    chain = []
    current: AsyncContainer | None = container
    while current is not None:
        chain.append(current)
        current = current.parent_container
    return chain


def _finalizer_stack(container: AsyncContainer) -> _OwnedExits:
    stack = container._exits  # noqa: SLF001  # dishka's finalizer stack, see the module docstring
    if not isinstance(stack, _OwnedExits):
        stack = _OwnedExits(stack)
        container._exits = stack  # noqa: SLF001  # same
    return stack


class ResourceSet:
    """The long-lived resources of one running container."""

    def __init__(self, container: AsyncContainer, graph: ResourceGraph, limits: Limits) -> None:
        self._container = container
        self._graph = graph
        self._limits = limits
        self._ready: dict[DependencyKey, anyio.Event] = {}
        self.report = StartupReport()
        self._entries = {key: ResourceStart(node.name) for key, node in graph.nodes.items()}
        self.report.resources.extend(self._entries.values())
        for each in _containers(container):
            _finalizer_stack(each)

    async def start_all(self) -> None:
        """Create every resource; raise StartupError naming the first one that failed."""
        await self.require(self._graph.nodes)

    async def require(self, keys: Iterable[DependencyKey]) -> None:
        """Create what ``keys`` need and is not created yet, concurrently where possible."""
        pending = self._closure(keys)
        if not pending:
            return
        for key in pending:
            self._ready[key] = anyio.Event()
        failures: list[StartupError] = []
        async with anyio.create_task_group() as group:
            for key in pending:
                group.start_soon(self._create_when_ready, key, failures, group.cancel_scope.cancel)
        if failures:
            raise failures[0]

    def _closure(self, keys: Iterable[DependencyKey]) -> list[DependencyKey]:
        wanted: set[DependencyKey] = set()
        stack = [node for key in keys for node in self._graph.nodes_for(key)]
        while stack:
            key = stack.pop()
            if key not in wanted and key not in self._ready:
                wanted.add(key)
                stack.extend(self._graph.nodes[key].requires)
        return [key for key in self._graph.nodes if key in wanted]

    async def _create_when_ready(
        self,
        key: DependencyKey,
        failures: list[StartupError],
        cancel_all: Callable[[], None],
    ) -> None:
        node = self._graph.nodes[key]
        for needed in node.requires:
            await self._ready[needed].wait()
        entry = self._entries[key]
        self.report.begin(entry)
        _creating.set(node.name)  # this task's own context: it names the finalizers it adds
        limit = self._limits.startup_for(key)
        try:
            with anyio.move_on_after(limit) as deadline:
                await self._container.get(key.type_hint, key.component)
        except anyio.get_cancelled_exc_class():
            self.report.end(entry, Outcome.CANCELLED)
            raise
        except Exception as error:  # noqa: BLE001  # any setup error fails the start, named
            self.report.end(entry, Outcome.FAILED, describe(error))
            failure = StartupError(
                f"resource {node.name}", describe(error), path=self._graph.path_to(key)
            )
            failure.__cause__ = error
            failures.append(failure)
            cancel_all()
            return
        if deadline.cancelled_caught:
            self.report.end(entry, Outcome.TIMED_OUT, f"over the {limit:g} s limit")
            failures.append(
                StartupTimeoutError(f"resource {node.name}", limit, path=self._graph.path_to(key))
            )
            cancel_all()
            return
        self.report.end(entry, Outcome.OK)
        self._ready[key].set()

    async def close(self, exception: BaseException | None) -> list[ShutdownStepError]:
        """Run every finalizer in reverse creation order; return the failures, each logged."""
        errors: list[ShutdownStepError] = []
        for container in _containers(self._container):
            stack = _finalizer_stack(container)
            while stack:
                item, owner = stack.pop_owned()
                error = await self._finalize(item, owner, exception)
                if error is not None:
                    logger.error("%s", error, exc_info=error.__cause__)
                    errors.append(error)
        await self._container.close(exception)  # nothing left to finalize; resets dishka's cache
        return errors

    async def _finalize(
        self,
        item: Exit,
        owner: str,
        exception: BaseException | None,
    ) -> ShutdownStepError | None:
        step = f"finalizer of {owner}"
        cause: BaseException | None = None
        try:
            with anyio.move_on_after(self._limits.shutdown) as deadline:
                if not await _advance(item, exception):
                    cause = RuntimeError("the provider yielded a second time; it must yield once")
        except anyio.get_cancelled_exc_class():
            # Not our time limit (the scope absorbs that): a self-cancelling finalizer or a
            # forced stop. Record it and go on with the others.
            cause = RuntimeError("the finalizer was cancelled")
        except Exception as error:  # noqa: BLE001  # every finalizer runs; this one's error is reported
            cause = error
        if deadline.cancel_called:
            return ShutdownTimeoutError(step, self._limits.shutdown)
        if cause is None:
            return None
        failure = ShutdownStepError(step, describe(cause))
        failure.__cause__ = cause
        return failure


async def _advance(item: Exit, exception: BaseException | None) -> bool:
    """Resume a provider after its ``yield``; return whether it finished, as it should."""
    generator, async_generator = item
    try:
        if async_generator is not None:
            await async_generator.asend(exception)
        elif generator is not None:
            generator.send(exception)
    except (StopIteration, StopAsyncIteration):
        return True
    return False
