"""Eager, concurrent, time-limited creation of the long-lived resources, and their teardown.

dishka creates APP resources lazily, one at a time behind a lock, and its ``close()`` stops at
the first cancellation. Here every resource is created at startup, each as soon as what it
needs is ready, under its own time limit; at exit every finalizer runs in reverse creation
order, each under a time limit, whatever the others do.

Each resource lives in a task of its own, from its setup to its finalizer, so a provider may
hold a task group or cancel scope across its ``yield`` as it may under plain dishka. The run
gives those tasks a task group that lasts from startup to the end of shutdown.

Facts of dishka 1.10 relied on (``tests/test_dishka_facts.py`` pins them): the container's
finalizers are the list ``container._exits`` of ``(generator, async_generator)`` pairs,
appended as each generator finishes its setup, in the task that ran it; a container made with
``lock_factory=None`` resolves without a lock, which is safe because a resource is only
requested once everything it needs is cached; an injected ``AsyncContainer`` is the container
itself, so a provider that fetches another resource through it calls ``AsyncContainer.get``,
which the startup container class below makes wait for that resource's own task.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import CodeType
from typing import Any, TypeAlias

import anyio
from anyio.abc import TaskGroup
from dishka import AsyncContainer, DependencyKey
from dishka.entities.component import DEFAULT_COMPONENT, Component

from ._errors import (
    ShutdownStepError,
    ShutdownTimeoutError,
    StartupError,
    StartupTimeoutError,
    describe,
    log_error,
)
from ._graph import ResourceGraph
from ._limits import StopShields, TimeLimit, is_stray_cancellation
from ._report import Outcome, ResourceStart, StartupReport

__all__ = ["Limits", "ResourceSet"]

logger = logging.getLogger("di_lifespan")

Exit: TypeAlias = tuple[Generator[Any, Any, Any] | None, AsyncGenerator[Any, Any] | None]


@dataclass(frozen=True, slots=True)
class Limits:
    """Time limits in seconds: per resource setup, per finalizer, and per resource type."""

    startup: float
    shutdown: float
    per_resource: Mapping[DependencyKey, float]

    def startup_for(self, key: DependencyKey) -> float:
        return self.per_resource.get(key, self.startup)


@dataclass(eq=False, slots=True)
class _Job:
    """One finalizer to run in the task that set its resource up."""

    item: Exit
    step: str
    exception: BaseException | None
    done: anyio.Event = field(default_factory=anyio.Event)
    failure: ShutdownStepError | None = None


class _Resource:
    """One resource's task: its setup, then, at shutdown, the finalizers that setup registered."""

    def __init__(self, key: DependencyKey, name: str, entry: ResourceStart) -> None:
        self.key = key
        self.name = name
        self.entry = entry
        self.ready = anyio.Event()
        self.settled = anyio.Event()  # setup over: ready, failed, timed out or cancelled
        # Around the resource's whole life in its task. A provider may leave its own scopes
        # open across its yield, so no other scope of ours may sit between its setup and its
        # finalizer: time limits are this scope's deadline, a forced stop cancels it.
        self.scope = anyio.CancelScope()
        self.jobs_in, self.jobs_out = anyio.create_memory_object_stream[_Job](1)
        self.closing = anyio.Event()  # close() has begun: finalizers are coming


# The resource whose task is running: its setup registers finalizers that this task will run.
_owner: ContextVar[_Resource | None] = ContextVar("di_lifespan_resource", default=None)


class _OwnedExits(list[Exit]):
    """dishka's finalizer stack, noting which resource's task registered each finalizer."""

    def __init__(self, items: Iterable[Exit]) -> None:
        super().__init__(items)
        self.owners: dict[int, _Resource | None] = {}

    def append(self, item: Exit, /) -> None:
        self.owners[id(item)] = _owner.get()
        super().append(item)

    def pop_owned(self) -> tuple[Exit, _Resource | None]:
        item = self.pop()
        return item, self.owners.pop(id(item), None)


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


class _StartupGate:
    """The key under which a container's context holds the ResourceSet that gates its gets."""


class _GatedContainer(AsyncContainer):
    """The APP and RUNTIME containers: a ``get`` of a resource another task creates waits for it."""

    __slots__ = ()

    async def get(
        self, dependency_type: Any, component: Component | None = DEFAULT_COMPONENT
    ) -> Any:
        context = self._context
        gate = context.get(_StartupGate) if context else None
        if gate is not None and gate.gating:
            await gate.before_get(DependencyKey(dependency_type, component or DEFAULT_COMPONENT))
        return await super().get(dependency_type, component)


class ResourceSet:
    """The long-lived resources of one running container."""

    def __init__(
        self,
        container: AsyncContainer,
        graph: ResourceGraph,
        limits: Limits,
        shields: StopShields,
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self._container = container
        self._on_failure = on_failure
        self._graph = graph
        self._limits = limits
        self._shields = shields
        self._tasks: TaskGroup | None = None
        self._resources: dict[DependencyKey, _Resource] = {}
        self._failures: list[StartupError] = []
        self.gating = True
        self.report = StartupReport()
        self._entries = {key: ResourceStart(node.name) for key, node in graph.nodes.items()}
        self.report.resources.extend(self._entries.values())
        for each in _containers(container):
            _finalizer_stack(each)
            each.__class__ = _GatedContainer
            if each._context is not None:  # noqa: SLF001  # dishka's context dict, see above
                each._context[_StartupGate] = self  # noqa: SLF001  # same

    def open(self, tasks: TaskGroup) -> None:
        """Run the resources' tasks in ``tasks``, which must last until ``close()`` returns."""
        self._tasks = tasks

    async def start_all(self) -> None:
        """Create every resource; raise StartupError naming the first one that failed."""
        await self.require(self._graph.nodes)

    def started(self) -> None:
        """Startup is over: gets need no more waiting."""
        self.gating = False

    async def require(self, keys: Iterable[DependencyKey]) -> None:
        """Create what ``keys`` need and is not created yet, concurrently where possible."""
        wanted = self._closure(keys)
        for key in wanted:
            if key not in self._resources:
                self._spawn(key)
        for key in wanted:
            await self._resources[key].settled.wait()
        if self._failures:
            raise self._failures[0]

    async def before_get(self, key: DependencyKey) -> None:
        """Wait until the resources ``key`` needs exist, unless this task is creating them."""
        owner = _owner.get()
        for node_key in self._graph.nodes_for(key):
            if owner is not None and node_key == owner.key:
                continue
            if node_key not in self._resources:
                await self.require([node_key])
                continue
            resource = self._resources[node_key]
            await resource.settled.wait()
            if not resource.ready.is_set():
                raise RuntimeError(f"resource {resource.name} did not start")

    def _spawn(self, key: DependencyKey) -> None:
        if self._tasks is None:
            raise RuntimeError("ResourceSet.open() gives the resources a task group first")
        node = self._graph.nodes[key]
        resource = self._resources[key] = _Resource(key, node.name, self._entries[key])
        self._tasks.start_soon(self._live, resource, name=f"resource {node.name}")

    def _closure(self, keys: Iterable[DependencyKey]) -> list[DependencyKey]:
        wanted: set[DependencyKey] = set()
        stack = [node for key in keys for node in self._graph.nodes_for(key)]
        while stack:
            key = stack.pop()
            if key not in wanted:
                wanted.add(key)
                stack.extend(self._graph.nodes[key].requires)
        return [key for key in self._graph.nodes if key in wanted]

    def _fail(self, failure: StartupError) -> None:
        """Record a failed setup and cancel the setups not finished yet."""
        self._failures.append(failure)
        for resource in self._resources.values():
            if not resource.settled.is_set():
                resource.scope.cancel()

    async def _live(self, resource: _Resource) -> None:
        _owner.set(resource)  # this task's own context: its setup's finalizers are its own
        # Once this task ends, close() runs the finalizers it would have run by itself.
        with resource.jobs_out, resource.scope:
            try:
                for needed in self._graph.nodes[resource.key].requires:
                    await self._resources[needed].ready.wait()
                await self._set_up(resource)
            except anyio.get_cancelled_exc_class():
                if not resource.scope.cancel_called:
                    raise  # the run itself is cancelled: nothing was created here
            finally:
                resource.settled.set()
            # Whatever was created here is finalized here, even under a cancelled run.
            resource.scope.shield = True
            self._shields.track(resource.scope)
            await self._serve_finalizers(resource)

    async def _set_up(self, resource: _Resource) -> None:
        key, entry = resource.key, resource.entry
        self.report.begin(entry)
        limit = self._limits.startup_for(key)
        began = anyio.current_time()
        resource.scope.deadline = began + limit
        try:
            await self._container.get(key.type_hint, key.component)
        except anyio.get_cancelled_exc_class() as error:
            if is_stray_cancellation(error):
                self._setup_failed(resource, error)
            elif resource.scope.cancel_called and anyio.current_time() >= resource.scope.deadline:
                self._timed_out(resource, limit)
            else:
                self.report.end(entry, Outcome.CANCELLED)
            raise
        except Exception as error:  # noqa: BLE001  # any setup error fails the start, named
            self._setup_failed(resource, error)
            return
        finally:
            resource.scope.deadline = math.inf
        if anyio.current_time() - began > limit:  # returned late: it could not be interrupted
            self._timed_out(resource, limit)
            return
        self.report.end(entry, Outcome.OK)
        resource.ready.set()

    def _timed_out(self, resource: _Resource, limit: float) -> None:
        self.report.end(resource.entry, Outcome.TIMED_OUT, f"over the {limit:g} s limit")
        path = self._graph.path_to(resource.key)
        self._fail(StartupTimeoutError(f"resource {resource.name}", limit, path=path))

    def _setup_failed(self, resource: _Resource, error: BaseException) -> None:
        self.report.end(resource.entry, Outcome.FAILED, describe(error))
        failure = StartupError(
            f"resource {resource.name}", describe(error), path=self._graph.path_to(resource.key)
        )
        failure.__cause__ = error
        self._fail(failure)

    async def _serve_finalizers(self, resource: _Resource) -> None:
        """Run, in this task, each finalizer of this resource that close() hands over."""
        await self._watch(resource)
        while True:
            # Only close() ends this wait: a cancelled run still finalizes what it created.
            with anyio.CancelScope(shield=True):
                try:
                    job = await resource.jobs_out.receive()
                except anyio.EndOfStream:
                    return
            try:
                job.failure = await self._finalize_owned(resource, job)
            finally:
                job.done.set()

    async def _watch(self, resource: _Resource) -> None:
        """Wait for the shutdown; stop the app early if a task the resource runs fails."""
        if resource.scope.cancel_called:
            return  # its setup was cancelled: what it created is finalized, nothing runs
        try:
            await resource.closing.wait()
        except anyio.get_cancelled_exc_class():
            # The resource's scope is shielded: only a scope its provider holds open across
            # its yield reaches here, as when a task of its task group failed.
            if not self._forced:
                logger.error("resource %s: a task it runs failed; stopping the app", resource.name)  # noqa: TRY400  # the failure itself is raised at exit
                self._on_failure()

    async def close(self, exception: BaseException | None) -> list[ShutdownStepError]:
        """Run every finalizer in reverse creation order; return the failures, each logged."""
        errors: list[ShutdownStepError] = []
        for resource in self._resources.values():
            resource.closing.set()
        # A setup that could not be interrupted may still register its finalizer: wait for
        # every setup to end first (a forced stop cuts this wait short).
        with self._shields.shield():
            for resource in self._resources.values():
                await resource.settled.wait()
        try:
            for container in _containers(self._container):
                stack = _finalizer_stack(container)
                while stack:
                    item, owner = stack.pop_owned()
                    name = owner.name if owner is not None else _provider_name(item)
                    job = _Job(item, f"finalizer of {name}", exception)
                    error = await self._run_job(owner, job)
                    if error is not None:
                        log_error(error, error.__cause__)
                        errors.append(error)
        finally:
            for resource in self._resources.values():
                resource.jobs_in.close()
        await self._container.close(exception)  # nothing left to finalize; resets dishka's cache
        return errors

    async def _run_job(self, owner: _Resource | None, job: _Job) -> ShutdownStepError | None:
        """Run the finalizer in its resource's task (here when that task is gone)."""
        try:
            if owner is None or (owner.scope.cancel_called and not self._forced):
                # No task of its own, or one whose scope a failed start or a time limit
                # cancelled although its setup completed: run it here, in a fresh scope.
                raise anyio.ClosedResourceError  # noqa: TRY301  # the fallback below
            owner.jobs_in.send_nowait(job)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return await self._finalize_here(job)
        # The finalizer is bounded and forced stops reach it there; this wait only follows it.
        with anyio.CancelScope(shield=True):
            await job.done.wait()
        return job.failure

    async def _finalize_owned(self, resource: _Resource, job: _Job) -> ShutdownStepError | None:
        """Run a finalizer in its resource's task, bounded by that task's scope's deadline."""
        limit = self._limits.shutdown
        scope = resource.scope
        began = anyio.current_time()
        scope.deadline = min(scope.deadline, began + limit)
        cause: BaseException | None = None
        try:
            finished = await _advance(job.item, job.exception)
        except BaseException as error:  # noqa: BLE001  # every finalizer runs; this one's error is reported
            cause = error
            finished = True
        finally:
            scope.deadline = math.inf
        late = anyio.current_time() - began > limit
        return _finalizer_outcome(job.step, cause, finished, limit, late=late, forced=self._forced)

    async def _finalize_here(self, job: _Job) -> ShutdownStepError | None:
        """Run a finalizer whose resource has no task of its own, in a bounded shielded scope."""
        limit = self._limits.shutdown
        cause: BaseException | None = None
        finished = True
        with self._shields.shield():
            try:
                with TimeLimit(limit) as time_limit:
                    finished = await _advance(job.item, job.exception)
            except BaseException as error:  # noqa: BLE001  # every finalizer runs; this one's error is reported
                cause = error
        return _finalizer_outcome(
            job.step, cause, finished, limit, late=time_limit.exceeded, forced=self._forced
        )

    @property
    def _forced(self) -> bool:
        return self._shields.forced


def _finalizer_outcome(
    step: str,
    cause: BaseException | None,
    finished: bool,  # noqa: FBT001  # a private helper's plain outcome flag
    limit: float,
    *,
    late: bool,
    forced: bool,
) -> ShutdownStepError | None:
    """How one finalizer ended, as the shutdown reports it (None: it finished in time)."""
    cancelled = isinstance(cause, anyio.get_cancelled_exc_class())
    if cancelled and forced:
        return ShutdownStepError(step, "was cancelled by a forced stop")
    if late:
        return ShutdownTimeoutError(step, limit)
    if cancelled:
        cause = RuntimeError("the finalizer was cancelled")
    elif not finished:
        cause = RuntimeError("the provider yielded a second time; it must yield once")
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
