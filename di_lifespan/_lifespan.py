"""One run of an app's lifespan, in one task: startup, serving, and the shutdown of what started.

Startup: build the container (graph and handler signatures checked, nothing started) → enter
the user's ``lifespan=`` context manager → ``on_startup`` hooks → every long-lived resource,
concurrently → bind the handlers (their APP dependencies resolved once) → start the broker and
subscribe one consumer per handler (delivery held back) → ``after_startup`` hooks → delivery
begins. A failure at any step shuts down what had started; the run then holds a StartupError.

Shutdown: ``on_shutdown`` hooks (reverse order) → subscribers stop fetching, finish the message
in hand and commit (within ``graceful_timeout``) → the broker flushes and stops →
``after_shutdown`` hooks (reverse order) → the user's context manager exits → the finalizers,
in reverse creation order. Every step runs even when an earlier one failed.

Task ownership: ``LifespanRun.main`` is one task that opens, and later closes, everything the
run holds: the task group of the resources' tasks (each resource is set up and finalized in a
task of its own), the task that holds the user's context manager (entered and exited there),
and the task group of the subscriber loops. Nothing is entered in one call and left in another.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from dishka import AsyncContainer, DependencyKey, Provider, Scope, make_async_container
from dishka.exception_base import DishkaError
from dishka.provider import BaseProvider

from ._broker import Broker
from ._delivery import ErrorReport, Publisher, Subscribers
from ._errors import (
    ConfigurationError,
    DependencyError,
    GraphError,
    ShutdownStepError,
    ShutdownTimeoutError,
    StartupError,
    StartupTimeoutError,
    describe,
    log_error,
)
from ._graph import ResourceGraph, key_name
from ._handlers import BoundHandler, HandlerSpec
from ._health import DEFAULT_HEALTH_HOST, HealthServer, Probes
from ._hooks import Hook
from ._limits import StopShields, TimeLimit, is_stray_cancellation
from ._message import Message
from ._metrics import NO_METRICS, AppMetrics
from ._report import StartupReport
from ._resources import Limits, ResourceSet
from ._router import PublishingFunction, check_publishing

__all__ = ["AppStatus", "LifespanPlan", "LifespanRun"]

logger = logging.getLogger("di_lifespan")

LifespanFactory = Callable[[Any], AbstractAsyncContextManager[Any]]


class AppStatus(enum.StrEnum):
    """Where an app is in its lifespan (``app.status``). A stopped app can be started again."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


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
    report_error: ErrorReport | None = None
    health_port: int | None = None  # serve /live, /ready and /metrics there (0: a free port)
    health_host: str = DEFAULT_HEALTH_HOST
    metrics: AppMetrics | None = None  # instrument the handlers, and report into it


class LifespanRun:
    """Starts once and stops once; the app makes a new run for each start.

    ``main`` runs the whole lifespan in the task that calls it and never raises but for a
    cancellation: a failed startup ends it with ``startup_error`` set, and ``failures`` lists
    every step of the shutdown that failed.
    """

    def __init__(self, plan: LifespanPlan, on_crash: Callable[[], None] | None = None) -> None:
        self._plan = plan
        self._on_crash = on_crash
        self.status = AppStatus.STARTING
        self.container: AsyncContainer | None = None
        self.report: StartupReport | None = None
        self.publisher = Publisher(plan.broker)
        self.startup_error: BaseException | None = None
        self.failures: list[ShutdownStepError] = []
        self.served = False  # became ready: shutdown hooks run; a stop before interrupted a start
        self._shields = StopShields()
        self._resources: ResourceSet | None = None
        self._graph: ResourceGraph | None = None
        self._held: _HeldContext | None = None
        self._broker_started = False
        self.subscribers = Subscribers(
            self._shields, on_crash=self._crashed, metrics=plan.metrics or NO_METRICS
        )
        self.health: HealthServer | None = None
        self._stop_requested = anyio.Event()
        self._exception: BaseException | None = None

    # --- control, from other tasks -------------------------------------------------------

    def request_stop(self, exception: BaseException | None = None) -> None:
        """Begin the shutdown; ``exception`` is what ended the app's use, for the finalizers."""
        if exception is not None and not isinstance(exception, anyio.get_cancelled_exc_class()):
            self._exception = exception
        self._stop_requested.set()

    def _crashed(self) -> None:
        self.request_stop()
        if self._on_crash is not None:
            self._on_crash()

    async def wait_stop_requested(self) -> None:
        """Return once something asked the run to stop (a caller, a signal, a crash)."""
        await self._stop_requested.wait()

    def force_stop(self) -> None:
        """Cancel whatever shutdown step is running and every step after it. Never blocks."""
        self._shields.force()

    @property
    def forced(self) -> bool:
        return self._shields.forced

    # --- the run -------------------------------------------------------------------------

    async def main(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start, report readiness through ``task_status``, serve until asked to stop, stop.

        A failed startup is rolled back before ``task_status`` is told, so the caller learns
        of it with everything already shut down.
        """
        async with anyio.create_task_group() as tasks:
            try:
                await self._start_health(tasks)
                await self._start_and_serve(tasks, task_status)
            except Exception as error:
                if self.served:
                    raise
                self.startup_error = error
            finally:
                self.status = AppStatus.STOPPING
                with self._shields.shield():
                    self.failures += await self._stop_the_rest()
                self._finish_report()
                self.status = AppStatus.STOPPED
                if self.health is not None:
                    self.health.close()
        if self.startup_error is not None:
            for failure in self.failures:
                self.startup_error.add_note(f"while rolling back: {failure}")
            task_status.started()

    async def _start_and_serve(self, tasks: TaskGroup, task_status: TaskStatus[None]) -> None:
        resources = self._build(tasks)
        await self._enter_user_lifespan(tasks)
        await self._run_startup_hooks("on_startup", resources)
        await resources.start_all()
        handlers = await self._bind_handlers()
        await self._start_broker()
        failure: BaseException | None = None
        async with anyio.create_task_group() as loops:
            # Raised inside, a failure would reach the caller wrapped in an ExceptionGroup.
            failure = await self._serve(loops, handlers, resources, task_status)
        if failure is not None:
            raise failure

    async def _serve(
        self,
        loops: TaskGroup,
        handlers: list[BoundHandler],
        resources: ResourceSet,
        task_status: TaskStatus[None],
    ) -> Exception | None:
        """Subscribe, run after_startup, deliver until asked to stop; return a startup failure."""
        try:
            await self._subscribe(loops, handlers)
            await self._run_startup_hooks("after_startup", resources)
            self.subscribers.deliver()  # only now may a message reach a handler
            resources.started()
            self.served = True
            self.status = AppStatus.RUNNING
            self._finish_report()
            task_status.started()
            await self._stop_requested.wait()
        except Exception as error:  # noqa: BLE001  # handed to main, which rolls back and reports
            return error
        finally:
            self.status = AppStatus.STOPPING
            with self._shields.shield():
                self.failures += await self._stop_subscribers()
        return None

    # --- startup -------------------------------------------------------------------------

    async def _start_health(self, tasks: TaskGroup) -> None:
        """Serve the probes from the start: /live answers while resources are still loading."""
        plan = self._plan
        if plan.health_port is None:
            return
        metrics = plan.metrics if plan.metrics is not None else AppMetrics()
        probes = Probes(
            running=self._ready,
            broker=plan.broker,
            metrics=metrics,
            partitions=self.subscribers.partitions,
            report=lambda: self.report,
        )
        server = self.health = HealthServer(plan.health_host, plan.health_port, probes)
        await self._bounded_start(
            f"the health server (port {plan.health_port})", partial(tasks.start, server.serve)
        )

    def _ready(self) -> bool:
        """Startup completed, delivery began, and no stop was asked for."""
        return self.status is AppStatus.RUNNING and not self._stop_requested.is_set()

    def _finish_report(self) -> None:
        report = self.report
        if report is None or report.duration is not None:
            return
        report.finish()
        if self.served:
            logger.info("startup report: %s\n%s", report.summary(), report)
        elif self.startup_error is not None:
            logger.error("startup report: %s\n%s", report.summary(), report)
        else:
            logger.warning("startup interrupted: %s\n%s", report.summary(), report)

    def _build(self, tasks: TaskGroup) -> ResourceSet:
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
        for spec in plan.handlers:
            BoundHandler.check(spec, container, graph)
        limits = Limits(
            plan.startup_timeout,
            plan.shutdown_timeout,
            _per_resource_limits(plan.startup_timeouts, graph),
        )
        resources = self._resources = ResourceSet(
            container, graph, limits, self._shields, on_failure=self._crashed
        )
        resources.open(tasks)
        self.report = resources.report
        self.report.broker = plan.broker.url
        return resources

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

    async def _bind_handlers(self) -> list[BoundHandler]:
        container, graph = self._built()
        return [await spec.bind(container, graph) for spec in self._plan.handlers]

    async def _start_broker(self) -> None:
        broker = self._plan.broker
        await self._bounded_start(f"the broker ({broker.url})", broker.start)
        self._broker_started = True

    async def _subscribe(self, loops: TaskGroup, handlers: list[BoundHandler]) -> None:
        plan = self._plan
        await self.subscribers.start(
            loops,
            plan.broker,
            handlers,
            limit=plan.startup_timeout,
            report_error=plan.report_error,
            graceful_timeout=plan.graceful_timeout,
        )

    async def _enter_user_lifespan(self, tasks: TaskGroup) -> None:
        factory = self._plan.lifespan
        if factory is None:
            return
        what = "the lifespan context manager"
        try:
            manager = factory(self._plan.app)
        except ConfigurationError:
            raise
        except Exception as error:
            raise StartupError(what, describe(error)) from error
        held = self._held = _HeldContext(manager, self._shields, self._crashed)
        tasks.start_soon(held.hold, self._plan.startup_timeout, self._plan.shutdown_timeout)
        await held.entered.wait()
        if held.enter_failure is not None:
            raise held.enter_failure

    async def _run_startup_hooks(self, stage: str, resources: ResourceSet) -> None:
        container, _ = self._built()
        for hook in self._plan.hooks[stage]:
            await resources.require(hook.dependencies.values())
            await self._bounded_start(hook.name, partial(hook.call, container))

    def _built(self) -> tuple[AsyncContainer, ResourceGraph]:
        if self.container is None or self._graph is None:
            raise RuntimeError("the container is built by the first startup step")
        return self.container, self._graph

    async def _bounded_start(self, what: str, step: Callable[[], Any]) -> None:
        limit = self._plan.startup_timeout
        try:
            with TimeLimit(limit) as time_limit:
                await step()
        except anyio.get_cancelled_exc_class() as error:
            if not is_stray_cancellation(error):
                raise
            raise StartupError(what, describe(error)) from error
        except Exception as error:
            raise StartupError(what, describe(error)) from error
        if time_limit.exceeded:
            raise StartupTimeoutError(what, limit)

    # --- shutdown ------------------------------------------------------------------------

    async def _stop_subscribers(self) -> list[ShutdownStepError]:
        failures: list[ShutdownStepError] = []
        if self.served:
            failures += await self._run_shutdown_hooks("on_shutdown")
        failures += await self.subscribers.stop(self._plan.graceful_timeout)
        return failures

    async def _stop_the_rest(self) -> list[ShutdownStepError]:
        failures = await self._stop_broker()
        if self.served:
            failures += await self._run_shutdown_hooks("after_shutdown")
        if self._held is not None:
            failures += await self._held.leave(self._exception)
        if self._resources is not None:
            failures += await self._resources.close(self._exception)
        return self.subscribers.crashes + failures

    async def _stop_broker(self) -> list[ShutdownStepError]:
        if not self._broker_started:
            return []
        self._broker_started = False
        broker = self._plan.broker
        failure = await self._bounded_stop(f"the broker ({broker.url})", broker.stop)
        return [] if failure is None else [failure]

    async def _run_shutdown_hooks(self, stage: str) -> list[ShutdownStepError]:
        container, _ = self._built()
        failures = []
        for hook in reversed(self._plan.hooks[stage]):
            failure = await self._bounded_stop(hook.name, partial(hook.call, container))
            if failure is not None:
                failures.append(failure)
        return failures

    async def _bounded_stop(
        self,
        step: str,
        action: Callable[[], Any],
    ) -> ShutdownStepError | None:
        limit = self._plan.shutdown_timeout
        failure: ShutdownStepError | None = None
        with self._shields.shield() as shield:
            try:
                with TimeLimit(limit) as time_limit:
                    await action()
            except anyio.get_cancelled_exc_class() as error:
                failure = ShutdownStepError(step, describe(error))
            except Exception as error:  # noqa: BLE001  # every step runs; this one's error is reported
                failure = ShutdownStepError(step, describe(error))
                failure.__cause__ = error
        if shield.cancel_called:
            failure = ShutdownStepError(step, "was cancelled by a forced stop")
        elif time_limit.exceeded:
            failure = ShutdownTimeoutError(step, limit)
        if failure is not None:
            log_error(failure, failure.__cause__)
        return failure


class _HeldContext:
    """The user's ``lifespan=`` context manager, entered and exited in a task of its own.

    The manager may hold a task group or cancel scope across its ``yield``; so no scope of
    ours is entered inside it. Its time limits are deadlines on the scope around it.
    """

    what = "the lifespan context manager"

    def __init__(
        self,
        manager: AbstractAsyncContextManager[Any],
        shields: StopShields,
        on_failure: Callable[[], None],
    ) -> None:
        self._manager = manager
        self._shields = shields
        self._on_failure = on_failure
        self._scope = anyio.CancelScope()
        self._leave = anyio.Event()
        self._exception: BaseException | None = None
        self._inside = False
        self.entered = anyio.Event()
        self.exited = anyio.Event()
        self.enter_failure: StartupError | None = None
        self.exit_failure: ShutdownStepError | None = None

    async def hold(self, startup_limit: float, shutdown_limit: float) -> None:
        try:
            with self._scope:
                await self._enter(startup_limit)
                if not self._inside:
                    return
                # Entered: from now on only its own deadline or a forced stop cancels it.
                self._scope.shield = True
                self._shields.track(self._scope)
                self._scope.deadline = math.inf
                self.entered.set()
                await self._wait_for_leave()
                await self._exit(shutdown_limit)
            if self._scope.cancelled_caught:
                self._note_cancelled(startup_limit, shutdown_limit)
        finally:
            self.entered.set()
            self.exited.set()

    async def _enter(self, limit: float) -> None:
        began = anyio.current_time()
        self._scope.deadline = began + limit
        try:
            await self._manager.__aenter__()
        except anyio.get_cancelled_exc_class() as error:
            if not is_stray_cancellation(error):
                raise
            self.enter_failure = StartupError(self.what, describe(error))
            return
        except Exception as error:  # noqa: BLE001  # reported to the run, which raises it
            self.enter_failure = StartupError(self.what, describe(error))
            self.enter_failure.__cause__ = error
            return
        self._inside = True
        if anyio.current_time() - began > limit:
            self.enter_failure = StartupTimeoutError(self.what, limit)

    async def _wait_for_leave(self) -> None:
        """Wait for the shutdown; stop the app early if a task the manager runs fails."""
        if self._scope.cancel_called:  # entered after its deadline: a late entry, not a failure
            with anyio.CancelScope(shield=True):
                await self._leave.wait()
            return
        try:
            await self._leave.wait()
        except anyio.get_cancelled_exc_class():
            # Our scope is shielded: only the manager's own scopes reach here, as when a task
            # of its task group failed. Its exit will raise that failure; stop the app now.
            if not self._shields.forced:
                logger.error("%s: a task it runs failed; stopping the app", self.what)  # noqa: TRY400  # the failure itself is raised at exit
                self._on_failure()
            with anyio.CancelScope(shield=True):
                await self._leave.wait()

    async def _exit(self, limit: float) -> None:
        if self._scope.cancel_called and not self._shields.forced:
            # Its entry overran startup_timeout, which cancelled the scope it runs in: its
            # exit runs, but is cut at its first await.
            self.exit_failure = ShutdownStepError(
                self.what, "was cut short: its entry had overrun startup_timeout"
            )
        began = anyio.current_time()
        self._scope.deadline = began + limit
        exception = self._exception
        try:
            await self._manager.__aexit__(
                type(exception) if exception is not None else None,
                exception,
                exception.__traceback__ if exception is not None else None,
            )
        except Exception as error:  # noqa: BLE001  # every step runs; this one's error is reported
            if error is not exception and self.exit_failure is None:
                self.exit_failure = ShutdownStepError(self.what, describe(error))
                self.exit_failure.__cause__ = error
            return
        if self.exit_failure is None and anyio.current_time() - began > limit:
            self.exit_failure = ShutdownTimeoutError(self.what, limit)

    def _note_cancelled(self, startup_limit: float, shutdown_limit: float) -> None:
        if not self._inside:
            self.enter_failure = StartupTimeoutError(self.what, startup_limit)
        elif self.exit_failure is not None:
            return  # already said what cut it short
        elif self._shields.forced:
            self.exit_failure = ShutdownStepError(self.what, "was cancelled by a forced stop")
        else:
            self.exit_failure = ShutdownTimeoutError(self.what, shutdown_limit)

    async def leave(self, exception: BaseException | None) -> list[ShutdownStepError]:
        """Exit the manager (if it was entered) in its own task; return how that failed."""
        self._exception = exception
        self._leave.set()
        with anyio.CancelScope(shield=True):  # its own deadline bounds it
            await self.exited.wait()
        if self.exit_failure is None:
            return []
        log_error(self.exit_failure, self.exit_failure.__cause__)
        return [self.exit_failure]


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
    """What the app itself provides: the Publisher (APP) and the incoming Message (REQUEST).

    It comes first, so that a provider of the app or a test override can replace either.
    """
    provider = Provider()
    provider.from_context(provides=Publisher, scope=Scope.APP)
    provider.from_context(provides=Message, scope=Scope.REQUEST)
    return provider
