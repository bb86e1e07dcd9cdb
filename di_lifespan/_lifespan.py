"""One run of an app's lifespan: startup in order, and the shutdown of exactly what started.

Startup: build the container (graph and handler signatures checked, nothing started) → enter
the user's ``lifespan=`` context manager → ``on_startup`` hooks → every long-lived resource,
concurrently → bind the handlers (their APP dependencies resolved once) → start the broker and
one subscriber loop per handler → ``after_startup`` hooks. A failure at any step shuts down
what had started and raises StartupError.

Shutdown: ``on_shutdown`` hooks (reverse order) → subscribers stop fetching, finish the message
in hand and commit (within ``graceful_timeout``) → the broker flushes and stops →
``after_shutdown`` hooks (reverse order) → the user's context manager exits → the finalizers,
in reverse creation order. Every step runs even when an earlier one failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from dishka import AsyncContainer, DependencyKey, Provider, Scope, make_async_container
from dishka.exception_base import DishkaError
from dishka.provider import BaseProvider

from ._broker import Broker
from ._delivery import Publisher, Subscribers
from ._errors import (
    ConfigurationError,
    DependencyError,
    GraphError,
    ShutdownStepError,
    ShutdownTimeoutError,
    StartupError,
    StartupTimeoutError,
    describe,
)
from ._graph import ResourceGraph, key_name
from ._handlers import BoundHandler, HandlerSpec
from ._hooks import Hook
from ._message import Message
from ._report import StartupReport
from ._resources import Limits, ResourceSet
from ._router import PublishingFunction, check_publishing

__all__ = ["LifespanPlan", "LifespanRun"]

logger = logging.getLogger("di_lifespan")

LifespanFactory = Callable[[Any], AbstractAsyncContextManager[Any]]


@dataclass(frozen=True, slots=True)
class LifespanPlan:
    """Everything one run needs, fixed when the run begins."""

    app: Any
    providers: Sequence[BaseProvider]
    context: Mapping[Any, Any]
    lifespan: LifespanFactory | None
    hooks: Mapping[str, Sequence[Hook]]
    handlers: Sequence[HandlerSpec]
    publishing: Sequence[PublishingFunction]
    broker: Broker
    startup_timeout: float
    shutdown_timeout: float
    graceful_timeout: float
    startup_timeouts: Mapping[Any, float]
    report_error: Callable[[BaseException], None] | None = None


class LifespanRun:
    """Starts once and stops once; the app makes a new run for each start."""

    def __init__(self, plan: LifespanPlan) -> None:
        self._plan = plan
        self.container: AsyncContainer | None = None
        self.report: StartupReport | None = None
        self._resources: ResourceSet | None = None
        self._user_lifespan: AbstractAsyncContextManager[Any] | None = None
        self._ready = False
        self._forced = False
        self._stop_scopes: list[anyio.CancelScope] = []
        self.publisher = Publisher(plan.broker)
        self._broker_started = False
        self._subscribers = Subscribers()
        self.crashes: list[ShutdownStepError] = []

    # --- startup -------------------------------------------------------------------------

    async def startup(self) -> None:
        """Start everything, or shut down what started and raise StartupError."""
        try:
            await self._start_steps()
        except BaseException as error:
            self._log_report(logging.ERROR)
            await self._roll_back(error)
            raise
        self._ready = True
        self._log_report(logging.INFO)

    def _log_report(self, level: int) -> None:
        if self.report is not None:
            self.report.finish()
            logger.log(level, "startup report: %s\n%s", self.report.summary(), self.report)

    async def _start_steps(self) -> None:
        resources = self._build()
        await self._enter_user_lifespan()
        await self._run_startup_hooks("on_startup", resources)
        await resources.start_all()
        handlers = await self._bind_handlers()
        await self._start_broker(handlers)
        await self._run_startup_hooks("after_startup", resources)

    def _build(self) -> ResourceSet:
        plan = self._plan
        check_publishing(list(plan.publishing))
        try:
            container = make_async_container(
                _framework_provider(),  # first, so that a test's override(Publisher, ...) wins
                *plan.providers,
                context={**plan.context, Publisher: self.publisher},
                lock_factory=None,  # resources are created by ResourceSet, in dependency order
            )
        except DishkaError as error:
            raise GraphError(str(error)) from error
        self.container = container
        graph = self._graph = ResourceGraph(
            container,
            roots={
                f"handler {spec.name}": spec.signature.dependencies.values()
                for spec in plan.handlers
            },
        )
        self._check_hooks(graph)
        self._check_handlers(container, graph)
        limits = Limits(
            plan.startup_timeout,
            plan.shutdown_timeout,
            _per_resource_limits(plan.startup_timeouts, graph),
        )
        self._resources = ResourceSet(container, graph, limits)
        self.report = self._resources.report
        self.report.broker = plan.broker.url
        return self._resources

    def _check_hooks(self, graph: ResourceGraph) -> None:
        for hooks in self._plan.hooks.values():
            for hook in hooks:
                for parameter, key in hook.dependencies.items():
                    if not graph.provides(key):
                        raise DependencyError(
                            hook.name,
                            parameter,
                            f"asks for {key_name(key)}, which no provider gives at APP scope"
                            " (hooks run outside any message, so REQUEST scope is not open)",
                        )

    def _check_handlers(self, container: AsyncContainer, graph: ResourceGraph) -> None:
        for spec in self._plan.handlers:
            BoundHandler.check(spec, container, graph)

    async def _bind_handlers(self) -> list[BoundHandler]:
        container = self._built_container()
        return [await spec.bind(container, self._graph) for spec in self._plan.handlers]

    async def _start_broker(self, handlers: list[BoundHandler]) -> None:
        broker = self._plan.broker
        await self._bounded_start(f"the broker ({broker.url})", broker.start)
        self._broker_started = True
        # Not under _bounded_start: the subscribers' task group must outlive this call.
        await self._subscribers.start(
            broker, handlers, self._plan.startup_timeout, self._plan.report_error
        )

    async def _enter_user_lifespan(self) -> None:
        factory = self._plan.lifespan
        if factory is None:
            return
        manager = factory(self._plan.app)
        await self._bounded_start("the lifespan context manager", manager.__aenter__)
        self._user_lifespan = manager

    async def _run_startup_hooks(self, stage: str, resources: ResourceSet) -> None:
        container = self._built_container()
        for hook in self._plan.hooks[stage]:
            await resources.require(hook.dependencies.values())
            await self._bounded_start(hook.name, partial(hook.call, container))

    def _built_container(self) -> AsyncContainer:
        if self.container is None:
            raise RuntimeError("the container is built by the first startup step")
        return self.container

    async def _bounded_start(self, what: str, step: Callable[[], Any]) -> None:
        limit = self._plan.startup_timeout
        try:
            with anyio.move_on_after(limit) as deadline:
                await step()
        except Exception as error:
            raise StartupError(what, describe(error)) from error
        if deadline.cancelled_caught:
            raise StartupTimeoutError(what, limit)

    async def _roll_back(self, error: BaseException) -> None:
        failures = await self._stop_steps(error)
        if isinstance(error, anyio.get_cancelled_exc_class()) and self.crashes:
            # The cancellation came from a subscriber that crashed while the app was starting.
            crash = self.crashes[0]
            raise StartupError(crash.step, crash.reason) from crash.__cause__
        if isinstance(error, StartupError):
            for failure in failures:
                error.add_note(f"while rolling back: {failure}")

    # --- shutdown ------------------------------------------------------------------------

    async def shutdown(self, exception: BaseException | None) -> list[ShutdownStepError]:
        """Run every shutdown step; return the failures (each one is also logged)."""
        return await self._stop_steps(exception)

    def force_stop(self) -> None:
        """Cancel whatever shutdown step is running and every step after it."""
        self._forced = True
        for scope in self._stop_scopes:
            scope.cancel()

    def _shielded(self) -> anyio.CancelScope:
        """A scope a cancelled caller cannot interrupt, but force_stop() can."""
        scope = anyio.CancelScope(shield=True)
        if self._forced:
            scope.cancel()
        self._stop_scopes.append(scope)
        return scope

    async def _stop_steps(self, exception: BaseException | None) -> list[ShutdownStepError]:
        failures: list[ShutdownStepError] = []
        with self._shielded():
            if self._ready:
                failures += await self._run_shutdown_hooks("on_shutdown")
            await self._subscribers.stop(self._plan.graceful_timeout)
        # Outside the shield: the subscribers' task group was entered before it.
        self.crashes = await self._subscribers.close(exception)
        failures += self.crashes
        # A graceful stop arrives as a cancellation; the resources see a clean exit.
        if isinstance(exception, anyio.get_cancelled_exc_class()):
            exception = None
        with self._shielded():
            failures += await self._stop_broker()
            if self._ready:
                failures += await self._run_shutdown_hooks("after_shutdown")
            failures += await self._exit_user_lifespan(exception)
            if self._resources is not None:
                failures += await self._resources.close(exception)
        self._ready = False
        return failures

    async def _stop_broker(self) -> list[ShutdownStepError]:
        if not self._broker_started:
            return []
        self._broker_started = False
        broker = self._plan.broker
        failure = await self._bounded_stop(f"the broker ({broker.url})", broker.stop)
        return [] if failure is None else [failure]

    async def _run_shutdown_hooks(self, stage: str) -> list[ShutdownStepError]:
        container = self._built_container()
        failures = []
        for hook in reversed(self._plan.hooks[stage]):
            failure = await self._bounded_stop(hook.name, partial(hook.call, container))
            if failure is not None:
                failures.append(failure)
        return failures

    async def _exit_user_lifespan(
        self,
        exception: BaseException | None,
    ) -> list[ShutdownStepError]:
        manager, self._user_lifespan = self._user_lifespan, None
        if manager is None:
            return []
        exc_type = type(exception) if exception is not None else None
        traceback = exception.__traceback__ if exception is not None else None
        failure = await self._bounded_stop(
            "the lifespan context manager",
            partial(manager.__aexit__, exc_type, exception, traceback),
        )
        return [] if failure is None else [failure]

    async def _bounded_stop(
        self,
        step: str,
        action: Callable[[], Any],
    ) -> ShutdownStepError | None:
        limit = self._plan.shutdown_timeout
        failure: ShutdownStepError | None = None
        try:
            with anyio.move_on_after(limit) as deadline:
                await action()
        except anyio.get_cancelled_exc_class():
            failure = ShutdownStepError(step, "was cancelled by a forced stop")
        except Exception as error:  # noqa: BLE001  # every step runs; this one's error is reported
            failure = ShutdownStepError(step, describe(error))
            failure.__cause__ = error
        if deadline.cancel_called and failure is None:
            failure = ShutdownTimeoutError(step, limit)
        if failure is not None:
            logger.error("%s", failure, exc_info=failure.__cause__)
        return failure


def _per_resource_limits(
    limits: Mapping[Any, float],
    graph: ResourceGraph,
) -> dict[DependencyKey, float]:
    by_key: dict[DependencyKey, float] = {}
    for type_hint, seconds in limits.items():
        key = type_hint if isinstance(type_hint, DependencyKey) else DependencyKey(type_hint, "")
        if key not in graph.nodes:
            raise ConfigurationError(
                "App(startup_timeouts=...)",
                f"names {key_name(key)}, which is not an APP resource of this app",
            )
        by_key[key] = seconds
    return by_key


def _framework_provider() -> Provider:
    """What the app itself provides: the Publisher (APP) and the incoming Message (REQUEST)."""
    provider = Provider()
    provider.from_context(provides=Publisher, scope=Scope.APP)
    provider.from_context(provides=Message, scope=Scope.REQUEST)
    return provider
