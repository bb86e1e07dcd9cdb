"""The application object: its providers, hooks and time limits, and its lifespan status."""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
from dishka import AsyncContainer, Provider, Scope
from dishka.provider import BaseProvider
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from ._broker import Broker, PartitionStatus
from ._brokers import broker_from
from ._config import check_context, lifespan_factory
from ._errors import (
    ConfigurationError,
    LifespanStateError,
    ShutdownError,
    ShutdownStepError,
    StartupError,
    log_error,
)
from ._health import DEFAULT_HEALTH_HOST
from ._hooks import Hook, function_name
from ._lifespan import AppStatus, LifespanPlan, LifespanRun
from ._limits import seconds
from ._message import Headers
from ._metrics import AppMetrics
from ._overrides import Override, check_overrides, resolve_overrides
from ._report import StartupReport
from ._router import Router
from ._settings import settings_provider

__all__ = ["App", "AppStatus", "State"]

logger = logging.getLogger("di_lifespan")

HookFunc = TypeVar("HookFunc", bound=Callable[..., Any])
Params = ParamSpec("Params")
Result = TypeVar("Result")

_STAGES = ("on_startup", "after_startup", "on_shutdown", "after_shutdown")
DEFAULT_STARTUP_TIMEOUT = 60.0
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
DEFAULT_GRACEFUL_TIMEOUT = 30.0


def _parameters_of(
    original: Callable[Concatenate[Any, Params], Result],
) -> Callable[[Callable[..., Any]], Callable[Concatenate[Any, Params], Result]]:
    """Give a method that passes its arguments on to ``original`` the parameters of ``original``.

    One parameter list, written once: mypy checks calls against ``original``'s parameters,
    and ``inspect.signature`` and ``help()`` show them.
    """

    def adopt(method: Callable[..., Any]) -> Callable[Concatenate[Any, Params], Result]:
        return functools.wraps(original)(method)

    return adopt


class State(SimpleNamespace):
    """Attributes of your own on one app (``app.state.model = ...``), as in starlette.

    Each app has its own, kept as long as the app object, across runs; the framework never
    reads or writes it.
    """


class App:
    """A message service whose resources live as long as it runs.

    ``providers`` are plain dishka providers. Every APP-scoped resource they declare is created
    when the app starts (concurrently where the graph allows, each within ``startup_timeout``
    seconds, or its entry in ``startup_timeouts``) and finalized in reverse order when it
    stops (each finalizer within ``shutdown_timeout`` seconds).

    With ``health_port`` (0: a free one, see ``health_address``) each run serves ``/live``,
    ``/ready`` and Prometheus ``/metrics`` over HTTP on ``health_host``:``health_port``.
    """

    def __init__(
        self,
        *providers: BaseProvider,
        broker: str | Broker | None = None,
        settings: type[BaseModel] | None = None,
        context: Mapping[type, Any] | None = None,
        lifespan: Callable[[App], AbstractAsyncContextManager[Any]]
        | Callable[[App], AsyncIterator[Any]]
        | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
        startup_timeouts: Mapping[Any, float] | None = None,
        env_file: str | Path | None = None,
        health_port: int | None = None,
        health_host: str = DEFAULT_HEALTH_HOST,
    ) -> None:
        for position, provider in enumerate(providers, start=1):
            if not isinstance(provider, BaseProvider):
                raise ConfigurationError(
                    f"App() argument {position}",
                    f"expected a dishka Provider, got {provider!r}",
                )
        self._providers = providers
        self._settings = settings
        self._context = dict(context or {})
        check_context(self._context, providers, settings)
        self._lifespan = lifespan_factory(lifespan)
        self.startup_timeout = seconds("App(startup_timeout=...)", startup_timeout)
        self.shutdown_timeout = seconds("App(shutdown_timeout=...)", shutdown_timeout)
        self.graceful_timeout = seconds("App(graceful_timeout=...)", graceful_timeout)
        self.broker = broker_from(broker)
        self._router = Router()
        self._router.attach(self)
        self._startup_timeouts = {
            type_hint: seconds(f"App(startup_timeouts=...) entry {type_hint!r}", value)
            for type_hint, value in (startup_timeouts or {}).items()
        }
        self.env_file = Path(env_file) if env_file is not None else None
        self.health_port = _port("App(health_port=...)", health_port)
        self.health_host = health_host
        self._metrics: AppMetrics | None = None
        if settings is not None:
            settings_provider(settings, None)  # checks the class now, not at startup
        elif env_file is not None:
            raise ConfigurationError(
                "App(env_file=...)",
                "an env file is read into a settings class, and there is none: pass"
                " settings=YourSettings too",
            )
        self._hooks: dict[str, list[Hook]] = {stage: [] for stage in _STAGES}
        self._app_state = State()
        self._run: LifespanRun | None = None
        self._entered: list[AbstractAsyncContextManager[App]] = []  # by `async with app`
        self._last_report: StartupReport | None = None
        self._forced_stop = False
        self._last_served = False
        self._last_failures: list[ShutdownStepError] = []

    # --- handlers and publishing ----------------------------------------------------------

    @_parameters_of(Router.subscriber)
    def subscriber(self, *args: Any, **kwargs: Any) -> Any:
        """Handle the messages of ``topic``: see ``Router.subscriber``."""
        return self._router.subscriber(*args, **kwargs)

    def publisher(self, topic: str) -> Callable[[HookFunc], HookFunc]:
        """Publish the decorated function's return value to ``topic``: see ``Router.publisher``."""
        return self._router.publisher(topic)

    def include_router(self, router: Router) -> None:
        """Add the handlers and publishers of ``router`` to the app.

        A router may be included in several apps; each runs its handlers.
        """
        self._router.include_router(router)

    async def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: str | bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Publish ``value`` to ``topic`` and wait for the broker's acknowledgement.

        ``bytes`` are sent as they are, ``str`` as UTF-8, anything else as JSON.
        """
        if self._run is None:
            raise LifespanStateError("publish", str(self._state))
        await self._run.publisher.publish(topic, value, key=key, headers=headers)

    # --- hooks ---------------------------------------------------------------------------

    def on_startup(self, func: HookFunc) -> HookFunc:
        """Run ``func`` at startup, before the resources are created (registration order)."""
        return self._add_hook("on_startup", func)

    def after_startup(self, func: HookFunc) -> HookFunc:
        """Run ``func`` once every resource is ready (registration order)."""
        return self._add_hook("after_startup", func)

    def on_shutdown(self, func: HookFunc) -> HookFunc:
        """Run ``func`` first thing at shutdown (reverse registration order)."""
        return self._add_hook("on_shutdown", func)

    def after_shutdown(self, func: HookFunc) -> HookFunc:
        """Run ``func`` at shutdown before the resources are finalized (reverse order)."""
        return self._add_hook("after_shutdown", func)

    def _add_hook(self, stage: str, func: HookFunc) -> HookFunc:
        hook = Hook.parse(func, stage)
        if self._state is not AppStatus.STOPPED:
            # The run under way took its hooks when it began: this one would silently not run.
            raise LifespanStateError(
                f"register {stage} hook {function_name(func)}", str(self._state)
            )
        self._hooks[stage].append(hook)
        return func

    # --- status and state ----------------------------------------------------------------

    @property
    def status(self) -> AppStatus:
        """Where the app is in its lifespan: stopped, starting, running or stopping."""
        return self._state

    @property
    def _state(self) -> AppStatus:
        return AppStatus.STOPPED if self._run is None else self._run.status

    @property
    def settings(self) -> type[BaseModel] | None:
        """The settings class given as ``settings=``, read at each start (None without one)."""
        return self._settings

    @property
    def state(self) -> State:
        """A namespace of your own on this app (``app.state.model = ...``), as in starlette.

        Not the lifespan status: that is ``app.status``.
        """
        return self._app_state

    @property
    def container(self) -> AsyncContainer:
        """The app's dishka container, from the start of startup to the end of shutdown."""
        if self._run is None or self._run.container is None:
            raise LifespanStateError("use app.container", str(self._state))
        return self._run.container

    async def partitions(self) -> dict[str, list[PartitionStatus]]:
        """Per subscriber, the partitions it owns now, with committed and end offsets and lag.

        For metrics and health checks; empty before delivery starts and after the run.
        """
        if self._run is None:
            return {}
        return await self._run.subscribers.partitions()

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The app's own Prometheus registry, served at ``/metrics``; add metrics of yours.

        Kept as long as the app object, across runs; the handlers are measured into it in
        the runs that serve a health port.
        """
        return self._app_metrics().registry

    def _app_metrics(self) -> AppMetrics:
        if self._metrics is None:
            self._metrics = AppMetrics()
        return self._metrics

    @property
    def health_address(self) -> tuple[str, int] | None:
        """Host and port the running app serves its probes on (None when it serves none)."""
        if self._run is None or self._run.health is None:
            return None
        return self._run.health.address

    @property
    def startup_report(self) -> StartupReport | None:
        """What happened to each resource in the latest startup (None before the first)."""
        if self._run is not None and self._run.report is not None:
            return self._run.report
        return self._last_report

    # --- lifespan ------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(
        self,
        *,
        broker: str | Broker | None = None,
        overrides: Sequence[BaseProvider | Override] = (),
        context: Mapping[Any, Any] | None = None,
        graceful_timeout: float | None = None,
        on_handler_error: Callable[[BaseException], None] | None = None,
        health_port: int | None = None,
        env_file: str | Path | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[App]:
        """Run the app's whole lifespan around the ``async with`` block.

        ``async with app`` is ``async with app.lifespan()``.
        The arguments change this run only, not the app: ``broker`` instead of the app's,
        ``overrides`` (dishka providers, or ``override(Type, value)``) replacing the app's
        factories for the same types, ``context`` added to the app's, another
        ``graceful_timeout``, a ``health_port`` to serve the probes on (instead of the app's).
        With ``on_handler_error`` a handler's exception is handed to it instead of being
        retried and dead-lettered (what the test client does).
        ``env_file`` is read into the settings class instead of the app's ``env_file``;
        ``options`` fill the hooks' plain parameters by name (what ``di-lifespan run`` passes
        its command-line options as), converted to their annotations.

        Raises StartupError when the app could not start (what had started is stopped again),
        and ShutdownError when steps of the shutdown failed. An exception of the block itself
        is raised as it is, with the shutdown's failures as notes.
        """
        plan = self._plan(
            broker=broker,
            overrides=overrides,
            context=context,
            graceful_timeout=graceful_timeout,
            report_error=on_handler_error,
            health_port=health_port,
            env_file=env_file,
            options=options,
        )
        if self._run is not None:
            raise LifespanStateError("start the app", f"{self._state} already")
        # A subscriber that crashes stops the app and cancels the block: it cannot go on.
        body = anyio.CancelScope()
        run = self._run = LifespanRun(plan, on_crash=body.cancel)
        body_error: BaseException | None = None
        try:
            async with anyio.create_task_group() as runner:
                await runner.start(run.main)
                if run.startup_error is None:
                    try:
                        with body:
                            yield self
                    except BaseException as error:  # noqa: BLE001  # raised again below, after the shutdown
                        body_error = error
                    run.request_stop(body_error)
        finally:
            self._run = None
            self._last_report = run.report
            self._last_served = run.served
            self._last_failures = list(run.failures)
            self._forced_stop = self._forced_stop or run.forced
        self._raise_outcome(run, body_error)

    @asynccontextmanager
    async def asgi_lifespan(self, asgi_app: object) -> AsyncIterator[None]:
        """The app's lifespan as an ASGI app's: ``FastAPI(lifespan=app.asgi_lifespan)``.

        The ASGI server's startup starts the app (every resource ready, handlers consuming)
        and its shutdown stops it; HTTP routes get the app's resources through
        ``di_lifespan.fastapi.setup_dishka``. Starlette enters and exits it in one task, as
        the app requires. ``asgi_app`` (the FastAPI or Starlette app) is not used.
        """
        async with self.lifespan():
            yield

    def _raise_outcome(self, run: LifespanRun, body_error: BaseException | None) -> None:
        if run.startup_error is not None:
            raise run.startup_error
        if body_error is not None:
            for failure in run.failures:
                body_error.add_note(f"while stopping: {failure}")
            raise body_error
        if run.failures:
            raise ShutdownError("the app stopped with errors", run.failures)

    async def __aenter__(self) -> App:
        manager = self.lifespan()
        await manager.__aenter__()
        self._entered.append(manager)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._entered:
            raise LifespanStateError("stop the app", str(self._state))
        await self._entered.pop().__aexit__(exc_type, exc, traceback)

    def _plan(
        self,
        *,
        broker: str | Broker | None = None,
        overrides: Sequence[BaseProvider | Override] = (),
        context: Mapping[Any, Any] | None = None,
        graceful_timeout: float | None = None,
        report_error: Callable[[BaseException], None] | None = None,
        health_port: int | None = None,
        env_file: str | Path | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> LifespanPlan:
        providers: list[BaseProvider] = [*self._providers]
        if env_file is not None and self._settings is None:
            raise ConfigurationError(
                "App.lifespan(env_file=...)",
                "an env file is read into a settings class, and the app has none",
            )
        if self._settings is not None:
            env_file = self.env_file if env_file is None else Path(env_file)
            providers.append(settings_provider(self._settings, env_file))
        all_context = {**self._context, **(context or {})}
        if all_context:
            providers.append(_context_provider(all_context))
        providers += resolve_overrides(
            check_overrides("App.lifespan(overrides=...)", overrides), providers
        )
        port = self.health_port if health_port is None else _port("health_port", health_port)
        return LifespanPlan(
            app=self,
            providers=providers,
            context=all_context,
            lifespan=self._lifespan,
            hooks={
                stage: tuple(hook.with_options(options or {}) for hook in hooks)
                for stage, hooks in self._hooks.items()
            },
            handlers=tuple(self._router.all_handlers()),
            publishing=tuple(self._router.all_publishing()),
            broker=self.broker if broker is None else broker_from(broker),
            startup_timeout=self.startup_timeout,
            shutdown_timeout=self.shutdown_timeout,
            graceful_timeout=(
                self.graceful_timeout
                if graceful_timeout is None
                else seconds("graceful_timeout", graceful_timeout)
            ),
            startup_timeouts=self._startup_timeouts,
            report_error=report_error,
            health_port=port,
            health_host=self.health_host,
            metrics=None if port is None else self._app_metrics(),
        )

    async def serve(self, *, health_port: int | None = None) -> None:
        """Start the app and serve until this call is cancelled or a subscriber fails, then stop.

        ``health_port`` serves the probes there instead of on the app's ``health_port``.
        Raises StartupError or ShutdownError as ``async with app`` does.
        """
        async with self.lifespan(health_port=health_port):
            run = self._run
            if run is not None:
                await run.wait_stop_requested()

    def force_stop(self) -> None:
        """Cut a running shutdown short: the step under way and the rest are cancelled.

        Returns at once; safe to call at any time, from the app's event loop.
        """
        if self._run is not None:
            self._forced_stop = True
            self._run.force_stop()

    def run(self, *, health_port: int | None = None) -> None:
        """Serve until SIGINT or SIGTERM, then stop gracefully; a second SIGINT exits at once.

        ``health_port`` serves the probes there instead of on the app's ``health_port``.

        Each failure is logged as one line (with its traceback when the log level is DEBUG).
        Exits the process with status 1 when startup, a subscriber or the shutdown failed,
        130 after a forced stop.
        """
        _configure_logging()
        self._forced_stop = False
        self._last_served = False
        status = anyio.run(functools.partial(self._serve_until_signalled, health_port))
        if self._forced_stop:
            raise SystemExit(130)
        if status:
            raise SystemExit(status)

    async def _serve_until_signalled(self, health_port: int | None = None) -> int:
        serving = anyio.CancelScope()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as watchers:
                watchers.start_soon(self._watch_signals, signals, serving)
                try:
                    with serving:
                        await self.serve(health_port=health_port)
                    if serving.cancelled_caught and not self._last_served:
                        logger.warning("stopped by a signal before startup finished")
                        return 1
                    if self._last_failures:
                        return 1  # a stop by signal: each failed step was logged as it failed
                except StartupError as error:
                    log_error(error)
                    for note in getattr(error, "__notes__", ()):
                        logger.error("%s", note)  # noqa: TRY400  # one line each; no traceback
                    return 1
                except ShutdownError:
                    return 1  # each failed step was logged as it failed
                finally:
                    watchers.cancel_scope.cancel()
        return 0

    async def _watch_signals(self, signals: Any, serving: anyio.CancelScope) -> None:
        async for received in signals:
            if not serving.cancel_called:
                logger.info(
                    "received %s: stopping gracefully (Ctrl+C again to exit at once)",
                    signal.Signals(received).name,
                )
                serving.cancel()
            elif received == signal.SIGINT:
                logger.warning("second interrupt: cancelling the rest of the shutdown")
                self.force_stop()


def _port(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:  # noqa: PLR2004  # the highest TCP port
        raise ConfigurationError(where, f"expected a TCP port (0 for a free one), got {value!r}")
    return value


def _context_provider(context: Mapping[type, Any]) -> Provider:
    """Make each ``context=`` value injectable by its type, at APP scope."""
    provider = Provider(scope=Scope.APP)
    for type_hint in context:
        provider.from_context(provides=type_hint)
    return provider


def _configure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
