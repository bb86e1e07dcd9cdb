"""Registering handlers and publishers: ``@app.subscriber``, ``@app.publisher``, ``Router``.

A router may be included in several apps (a fresh app per test, say): each app runs its
handlers, and a publishing function publishes through whichever of them is running. Nothing
is registered on a router while an app that includes it is running: the run has already
taken its handlers.
"""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ._errors import ConfigurationError, LifespanStateError
from ._handlers import HandlerSpec, Retry, Signature
from ._hooks import function_name, is_async_callable
from ._limits import seconds

__all__ = [
    "DEFAULT_DEAD_LETTER",
    "DEFAULT_RETRY",
    "PublishingFunction",
    "Router",
    "check_publishing",
]

Func = TypeVar("Func", bound=Callable[..., Any])

DEFAULT_RETRY = Retry()
DEFAULT_DEAD_LETTER = "{topic}.dlq"


_STOPPED = "stopped"


class _Publishes(Protocol):
    """What a router needs of an app: its lifespan status, and publishing."""

    @property
    def status(self) -> str: ...

    async def publish(self, topic: str, value: Any) -> None: ...


def check_publishing(functions: list[PublishingFunction]) -> None:
    """Refuse a publishing function that is sync and no subscriber: it could not publish."""
    for item in functions:
        if not is_async_callable(item.func):
            raise ConfigurationError(
                f"@publisher on {function_name(item.func)}",
                "a function that publishes its return value when called must be async"
                " (or be a subscriber too)",
            )


class PublishingFunction:
    """A function that is not a subscriber but whose return value is published when called."""

    def __init__(self, func: Callable[..., Any], router: Router) -> None:
        self.func = func
        self.topics: list[str] = []
        self._router = router
        functools.update_wrapper(self, func)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = await self.func(*args, **kwargs)
        if result is not None:
            app = self._router.publishing_app(function_name(self.func))
            for topic in self.topics:
                await app.publish(topic, result)
        return result


class _HandlerName:
    """The default ``group``: named after the handler."""

    def __repr__(self) -> str:
        return "<the handler's name>"


HANDLER_NAME = _HandlerName()


class Router:
    """A set of handlers and publishers; ``app.include_router(router)`` adds them to an app."""

    def __init__(self) -> None:
        self.handlers: list[HandlerSpec] = []
        self.publishing: list[PublishingFunction] = []
        self.routers: list[Router] = []
        # Weak: a router at module level must not keep every app of a test session alive.
        self._apps: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def apps(self) -> list[_Publishes]:
        """The apps this router is included in, directly or through another router."""
        return list(self._apps)

    def subscriber(
        self,
        topic: str,
        *more_topics: str,
        group: str | _HandlerName | None = HANDLER_NAME,
        retry: Retry | None = DEFAULT_RETRY,
        dead_letter: str | None = DEFAULT_DEAD_LETTER,
        max_concurrency: int = 1,
        handler_timeout: float | None = None,
    ) -> Callable[[Func], Func]:
        """Handle every message of ``topic`` (and ``more_topics``) with the decorated function.

        ``group`` shares the topics' partitions among the group's consumers and resumes from
        its committed offsets (a new group from the start of the log). By default the group is
        named after the handler (``module.function``, a script's module named as it would be
        imported), so a restarted service misses nothing and replicas share the work;
        ``group=None`` reads every partition from the end of the log and commits nothing.
        A failing handler is tried ``retry.attempts`` times in all,
        then the message goes to ``dead_letter`` (``{topic}`` is the message's topic; None
        drops it with an error log line). ``max_concurrency`` partitions are handled at once;
        within a partition, messages are handled one at a time, in order.
        ``handler_timeout`` (seconds) bounds each attempt: a handler still running then is
        cancelled, and that attempt fails with HandlerTimeoutError (retried, then
        dead-lettered, as any failure); None, the default, sets no limit.
        """
        topics = (topic, *more_topics)
        where = f"subscriber({', '.join(map(repr, topics))})"
        for name in topics:
            _check_topic(where, name)
        if (
            group is not None
            and not isinstance(group, _HandlerName)
            and (not isinstance(group, str) or not group)
        ):
            raise ConfigurationError(
                where, f"group must be a non-empty string or None, got {group!r}"
            )
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigurationError(where, f"retry must be a Retry(...) or None, got {retry!r}")
        if dead_letter is not None:
            _check_topic(f"{where} dead_letter", dead_letter)
            _check_no_loop(where, topics, dead_letter)
        if (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            raise ConfigurationError(
                where, f"max_concurrency must be a whole number >= 1, got {max_concurrency!r}"
            )
        if handler_timeout is not None:
            handler_timeout = seconds(f"{where} handler_timeout", handler_timeout)

        def register(func: Func) -> Func:
            if not callable(func):
                raise ConfigurationError(where, f"expected a function, got {func!r}")
            self._check_open(f"register handler {function_name(func)}")
            target, topics_out = self._unwrap(func)
            spec = HandlerSpec(
                target,
                topics,
                default_group(target) if isinstance(group, _HandlerName) else group,
                retry,
                dead_letter,
                max_concurrency,
                Signature.read(target, f"handler {function_name(target)}"),
                topics_out,
                handler_timeout,
            )
            self.handlers.append(spec)
            # The plain function: called directly (in a unit test, say) it publishes nothing.
            return target  # type: ignore[return-value]  # the function under the publishing wrapper

        return register

    def publisher(self, topic: str) -> Callable[[Func], Func]:
        """Publish the decorated function's return value (when not None) to ``topic``.

        On a subscriber, the value the handler returns is published. On any other async
        function, calling it publishes what it returns, through the running app.
        """
        _check_topic(f"publisher({topic!r})", topic)

        def register(func: Func) -> Func:
            self._check_open(f"register publisher {function_name(func)}")
            for spec in self.handlers:
                if spec.func is func:
                    spec.publish_to.append(topic)
                    return func
            wrapper = func if isinstance(func, PublishingFunction) else self._wrap(func)
            wrapper.topics.append(topic)
            return wrapper  # type: ignore[return-value]  # a callable with the same signature

        return register

    def include_router(self, router: Router) -> None:
        """Add the handlers and publishers of ``router`` to this one."""
        if not isinstance(router, Router):
            raise ConfigurationError("include_router(...)", f"expected a Router, got {router!r}")
        if router is self or router in self.routers:
            raise ConfigurationError("include_router(...)", "this router is already included")
        self._check_open("include a router")
        self.routers.append(router)
        for app in self._apps:
            router.attach(app)

    def all_handlers(self) -> list[HandlerSpec]:
        return [
            *self.handlers,
            *(spec for router in self.routers for spec in router.all_handlers()),
        ]

    def all_publishing(self) -> list[PublishingFunction]:
        return [
            *self.publishing,
            *(item for router in self.routers for item in router.all_publishing()),
        ]

    def attach(self, app: _Publishes) -> None:
        """Let calls of publishing functions go through ``app`` (one of the apps, when running)."""
        self._apps.add(app)
        for router in self.routers:
            router.attach(app)

    def publishing_app(self, function: str) -> _Publishes:
        """The app a publishing function publishes through: the one that is not stopped."""
        apps = self.apps
        live = [app for app in apps if app.status != _STOPPED]
        if len(live) == 1 or (len(apps) == 1 and not live):
            return (live or apps)[0]  # a lone stopped app refuses the publish itself
        if not apps:
            raise LifespanStateError(f"publish the result of {function}", "not included in any app")
        if not live:
            raise LifespanStateError(f"publish the result of {function}", _STOPPED)
        raise ConfigurationError(
            f"@publisher on {function}",
            f"its router is included in {len(live)} running apps, so there is no one app to"
            " publish through; call app.publish(...) on the one you mean",
        )

    def _check_open(self, action: str) -> None:
        """Refuse a change while an app including this router runs: the run would not see it."""
        for app in self._apps:
            if app.status != _STOPPED:
                raise LifespanStateError(action, str(app.status))

    def _wrap(self, func: Callable[..., Any]) -> PublishingFunction:
        # A sync function is fine under a subscriber; alone, the app refuses it at startup.
        wrapper = PublishingFunction(func, self)
        self.publishing.append(wrapper)
        return wrapper

    def _unwrap(self, func: Callable[..., Any]) -> tuple[Callable[..., Any], list[str]]:
        if isinstance(func, PublishingFunction):
            self.publishing.remove(func)
            return func.func, list(func.topics)
        return func, []


def _check_no_loop(where: str, topics: tuple[str, ...], dead_letter: str) -> None:
    for topic in topics:
        if dead_letter.replace("{topic}", topic) == topic:
            raise ConfigurationError(
                f"{where} dead_letter",
                f"{dead_letter!r} sends failed messages of {topic!r} back to {topic!r}, where"
                " they would fail again, forever; name another topic (the default is"
                " '{topic}.dlq'), or None to drop them",
            )


def _check_topic(where: str, topic: object) -> None:
    if not isinstance(topic, str) or not topic.strip():
        raise ConfigurationError(where, f"a topic must be a non-empty string, got {topic!r}")


def default_group(func: Callable[..., Any]) -> str:
    """The consumer group of a subscriber given none: ``module.function``, stable over restarts.

    A script's module is named as it would be imported (``python svc.py``, ``python -m svc``
    and ``import svc`` all give ``svc.handle``), so that changing how it is started does not
    start a new group.
    """
    name = function_name(func)
    module = getattr(func, "__module__", None)
    if module == "__main__":
        module = _main_module_name()
    return name if module is None else f"{module}.{name}"


def _main_module_name() -> str | None:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return str(spec.name).removesuffix(".__main__")
    path = getattr(main, "__file__", None)
    return Path(path).stem if path else None
