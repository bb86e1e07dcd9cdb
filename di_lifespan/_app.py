"""The application object: its providers, hooks and time limits, and its lifespan states."""

from __future__ import annotations

import enum
import functools
import logging
import math
import signal
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
from dishka import AsyncContainer, Provider, Scope
from dishka.provider import BaseProvider
from pydantic import BaseModel

from ._broker import Broker
from ._brokers import broker_from
from ._errors import (
    ConfigurationError,
    LifespanStateError,
    ShutdownError,
    ShutdownStepError,
    StartupError,
)
from ._hooks import Hook
from ._lifespan import LifespanPlan, LifespanRun
from ._message import Headers
from ._report import StartupReport
from ._router import Router
from ._settings import settings_provider

__all__ = ["App", "AppState"]

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


class AppState(enum.StrEnum):
    """Where an app is in its lifespan. A stopped app can be started again."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


class App:
    """A message service whose resources live as long as it runs.

    ``providers`` are plain dishka providers. Every APP-scoped resource they declare is created
    when the app starts (concurrently where the graph allows, each within ``startup_timeout``
    seconds, or its entry in ``startup_timeouts``) and finalized in reverse order when it
    stops (each finalizer within ``shutdown_timeout`` seconds).
    """

    def __init__(
        self,
        *providers: BaseProvider,
        broker: str | Broker | None = None,
        settings: type[BaseModel] | None = None,
        context: Mapping[type, Any] | None = None,
        lifespan: Callable[[App], AbstractAsyncContextManager[Any]] | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
        startup_timeouts: Mapping[Any, float] | None = None,
        env_file: str | Path | None = None,
    ) -> None:
        for position, provider in enumerate(providers, start=1):
            if not isinstance(provider, BaseProvider):
                raise ConfigurationError(
                    f"App() argument {position}",
                    f"expected a dishka Provider, got {provider!r}",
                )
        if lifespan is not None and not callable(lifespan):
            raise ConfigurationError("App(lifespan=...)", f"expected a callable, got {lifespan!r}")
        self._providers = providers
        self._settings = settings
        self._context = dict(context or {})
        self._lifespan = lifespan
        self.startup_timeout = _seconds("App(startup_timeout=...)", startup_timeout)
        self.shutdown_timeout = _seconds("App(shutdown_timeout=...)", shutdown_timeout)
        self.graceful_timeout = _seconds("App(graceful_timeout=...)", graceful_timeout)
        self.broker = broker_from(broker)
        self._router = Router()
        self._router.attach(self)
        self._startup_timeouts = {
            type_hint: _seconds(f"App(startup_timeouts=...) entry {type_hint!r}", value)
            for type_hint, value in (startup_timeouts or {}).items()
        }
        self.env_file = Path(env_file) if env_file is not None else None
        if settings is not None:
            settings_provider(settings, None)  # checks the class now, not at startup
        self._hooks: dict[str, list[Hook]] = {stage: [] for stage in _STAGES}
        self._state = AppState.STOPPED
        self._run: LifespanRun | None = None
        self._last_report: StartupReport | None = None
        self._shutdown_failures: list[ShutdownStepError] = []
        self._forced_stop = False

    # --- handlers and publishing ----------------------------------------------------------

    @_parameters_of(Router.subscriber)
    def subscriber(self, *args: Any, **kwargs: Any) -> Any:
        """Handle the messages of ``topic``: see ``Router.subscriber``."""
        return self._router.subscriber(*args, **kwargs)

    def publisher(self, topic: str) -> Callable[[HookFunc], HookFunc]:
        """Publish the decorated function's return value to ``topic``: see ``Router.publisher``."""
        return self._router.publisher(topic)

    def include_router(self, router: Router) -> None:
        """Add the handlers and publishers of ``router`` to the app."""
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
        if self._run is None or self._state is AppState.STOPPED:
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
        self._hooks[stage].append(Hook.parse(func, stage))
        return func

    # --- state ---------------------------------------------------------------------------

    @property
    def state(self) -> AppState:
        """The lifespan state: stopped, starting, running or stopping."""
        return self._state

    @property
    def container(self) -> AsyncContainer:
        """The app's dishka container, from the start of startup to the end of shutdown."""
        if self._run is None or self._run.container is None:
            raise LifespanStateError("use app.container", str(self._state))
        return self._run.container

    @property
    def startup_report(self) -> StartupReport | None:
        """What happened to each resource in the latest startup (None before the first)."""
        return self._last_report

    # --- lifespan ------------------------------------------------------------------------

    async def __aenter__(self) -> App:
        await self._start(self._plan())
        return self

    async def _start(self, plan: LifespanPlan) -> None:
        """Run the startup of ``plan``; the test client starts the app with a changed plan."""
        if self._state is not AppState.STOPPED:
            raise LifespanStateError("start the app", f"{self._state} already")
        self._state = AppState.STARTING
        run = self._run = LifespanRun(plan)
        try:
            await run.startup()
        except BaseException:
            self._run = None
            self._state = AppState.STOPPED
            raise
        finally:
            self._last_report = run.report
        self._state = AppState.RUNNING

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        run = self._run
        if run is None or self._state is not AppState.RUNNING:
            raise LifespanStateError("stop the app", str(self._state))
        self._state = AppState.STOPPING
        try:
            failures = await run.shutdown(exc)
        finally:
            self._run = None
            self._state = AppState.STOPPED
        self._shutdown_failures = failures
        # A subscriber that crashed cancelled the body: its error replaces that cancellation.
        if failures and (exc is None or run.crashes):
            raise ShutdownError("the app stopped with errors", failures)

    def _plan(self) -> LifespanPlan:
        providers: list[BaseProvider] = [*self._providers]
        if self._settings is not None:
            providers.append(settings_provider(self._settings, self.env_file))
        if self._context:
            providers.append(_context_provider(self._context))
        return LifespanPlan(
            app=self,
            providers=providers,
            context=self._context,
            lifespan=self._lifespan,
            hooks={stage: tuple(hooks) for stage, hooks in self._hooks.items()},
            handlers=tuple(self._router.all_handlers()),
            publishing=tuple(self._router.all_publishing()),
            broker=self.broker,
            startup_timeout=self.startup_timeout,
            shutdown_timeout=self.shutdown_timeout,
            graceful_timeout=self.graceful_timeout,
            startup_timeouts=self._startup_timeouts,
        )

    async def serve(self) -> None:
        """Start the app and keep it running until this call is cancelled, then stop it."""
        async with self:
            await anyio.sleep_forever()

    def force_stop(self) -> None:
        """Cut a running shutdown short: the step under way and the rest are cancelled."""
        if self._run is not None:
            self._forced_stop = True
            self._run.force_stop()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop gracefully; a second SIGINT exits at once.

        Exits the process with status 1 when startup or shutdown failed, 130 after a forced
        stop.
        """
        _configure_logging()
        self._forced_stop = False
        failure = anyio.run(self._serve_until_signalled)
        if failure is not None:
            logger.error("%s", failure)
            for note in getattr(failure, "__notes__", ()):
                logger.error("%s", note)
            raise SystemExit(1)
        if self._forced_stop:
            raise SystemExit(130)
        if self._shutdown_failures:
            raise SystemExit(1)

    async def _serve_until_signalled(self) -> StartupError | None:
        serving = anyio.CancelScope()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as watchers:
                watchers.start_soon(self._watch_signals, signals, serving)
                try:
                    with serving:
                        await self.serve()
                except StartupError as error:
                    return error
                finally:
                    watchers.cancel_scope.cancel()
        return None

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


def _seconds(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(where, f"expected a number of seconds, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(where, f"expected a positive number of seconds, got {value!r}")
    return float(value)


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
