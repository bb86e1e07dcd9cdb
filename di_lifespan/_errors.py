"""The errors di_lifespan raises, each with structured fields and a one-line message.

Every error derives from ``DiLifespanError``::

    DiLifespanError
    ├── ConfigurationError          bad arguments to App, a handler or hook, or bad settings
    ├── LifespanStateError          an action the app's current state does not allow
    ├── StartupError                the app could not start; what is running was rolled back
    │   ├── GraphError              the dependency graph is invalid (dishka's explanation kept)
    │   ├── StartupTimeoutError     a resource or hook took longer than its time limit
    │   └── DependencyError         a hook asks for something nobody provides at APP scope
    ├── DeliveryError               a subscriber stopped: its transport failed under it
    ├── TransportError              the broker refused or could not serve a request
    │   ├── SendRejectedError       the broker refused one message (too large, invalid)
    │   ├── BrokerUnavailableError  the broker stayed unreachable past its bound
    │   └── EmbeddedKafkaError      the embedded broker could not be found or did not come up
    ├── EncodingError               (also a TypeError) a value, key or header cannot be published
    ├── HandlerTimeoutError         a handler outlived its subscriber's handler_timeout
    ├── ShutdownError               (also an ExceptionGroup) every failure of one shutdown
    └── ShutdownStepError           one failed step inside a ShutdownError
        └── ShutdownTimeoutError    a finalizer or hook that outlived its time limit
"""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Sequence
from typing import Any, Self

from pydantic import ValidationError

__all__ = [
    "BrokerUnavailableError",
    "ConfigurationError",
    "DeliveryError",
    "DependencyError",
    "DiLifespanError",
    "EmbeddedKafkaError",
    "EncodingError",
    "GraphError",
    "HandlerTimeoutError",
    "LifespanStateError",
    "SendRejectedError",
    "ShutdownError",
    "ShutdownStepError",
    "ShutdownTimeoutError",
    "StartupError",
    "StartupTimeoutError",
    "TransportError",
]


class DiLifespanError(Exception):
    """The root of every error di_lifespan raises."""


class ConfigurationError(DiLifespanError):
    """An argument given to di_lifespan is wrong; nothing has started.

    A settings value that does not validate is one too: it is the cause of the StartupError
    that names the settings resource.
    """

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(where, problem)

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


class LifespanStateError(DiLifespanError):
    """The app was asked to do something its current state does not allow."""

    def __init__(self, action: str, state: str) -> None:
        self.action = action
        self.state = state
        super().__init__(action, state)

    def __str__(self) -> str:
        return f"cannot {self.action}: the app is {self.state}"


class StartupError(DiLifespanError):
    """The app could not start; everything that had started was shut down again.

    ``what`` names the failing part ("resource Model", "on_startup hook warm_up"),
    ``path`` the chain of resources that needed it, outermost first, and the cause is
    chained as ``__cause__``.
    """

    def __init__(
        self,
        what: str,
        reason: str,
        *,
        path: Sequence[str] = (),
    ) -> None:
        self.what = what
        self.reason = reason
        self.path = tuple(path)
        super().__init__(what, reason, self.path)

    def __str__(self) -> str:
        text = f"{self.what} failed to start: {self.reason}"
        if len(self.path) > 1:
            text += f" (dependency path: {' -> '.join(self.path)})"
        return text


class GraphError(StartupError):
    """The providers do not form a valid graph: a missing factory, a cycle, a scope mismatch."""

    def __init__(self, explanation: str) -> None:
        super().__init__("the dependency graph", explanation)

    def __str__(self) -> str:
        return f"invalid dependency graph: {self.reason}"


class StartupTimeoutError(StartupError):
    """A resource or startup hook did not finish within its time limit and was cancelled."""

    def __init__(self, what: str, timeout: float, *, path: Sequence[str] = ()) -> None:
        self.timeout = timeout
        super().__init__(what, f"did not finish within {timeout:g} s", path=path)


class DependencyError(StartupError):
    """A hook parameter asks for a type that no provider gives at APP scope."""

    def __init__(self, what: str, parameter: str, reason: str) -> None:
        self.parameter = parameter
        super().__init__(what, f"parameter {parameter!r} {reason}")


class DeliveryError(DiLifespanError):
    """A subscriber stopped because its transport failed (a send or commit that cannot succeed).

    ``subscriber`` names the handler; ``topic``, ``partition`` and ``offset`` say which message
    it was delivering, when the failure belongs to one. Its uncommitted messages are read
    again by the next consumer of the group.
    """

    def __init__(
        self,
        subscriber: str,
        reason: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.subscriber = subscriber
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(subscriber, reason)

    def __str__(self) -> str:
        where = "" if self.topic is None else f" at {self.topic}[{self.partition}]@{self.offset}"
        return f"subscriber {self.subscriber} stopped{where}: {self.reason}"


class TransportError(DiLifespanError):
    """The broker at ``broker`` (its URL) refused a request, or could not be reached.

    ``operation`` says what was asked (``"send to orders"``, ``"commit"``, ``"connect"``).
    """

    def __init__(self, broker: str, operation: str, reason: str) -> None:
        self.broker = broker
        self.operation = operation
        self.reason = reason
        super().__init__(broker, operation, reason)

    def __str__(self) -> str:
        return f"{self.operation} on {self.broker} failed: {self.reason}"


class SendRejectedError(TransportError):
    """The broker refused this one message (too large, an invalid topic or record).

    Sending it again would fail alike: a handler's message whose result or publication is
    refused goes to the dead-letter topic at once, with this error as its reason.
    """

    def __init__(self, broker: str, topic: str, reason: str) -> None:
        self.topic = topic
        super().__init__(broker, f"send to {topic}", reason)
        self.args = (broker, topic, reason)  # as given: a pickled copy is made again from them


class BrokerUnavailableError(TransportError):
    """The broker did not answer for ``waited`` seconds, each attempt retried and logged."""

    def __init__(self, broker: str, operation: str, reason: str, *, waited: float) -> None:
        self.waited = waited
        super().__init__(broker, operation, f"{reason} (unreachable for {waited:g} s)")
        self.args = (broker, operation, reason)


class EmbeddedKafkaError(TransportError):
    """The embedded Kafka broker could not be found, or did not come up as ours.

    ``address`` is the ``host:port`` it was to listen on, when it got that far.
    """

    def __init__(self, reason: str, *, address: str | None = None) -> None:
        self.address = address
        super().__init__("embedded://", "start", reason)

    def __str__(self) -> str:
        where = f" on {self.address}" if self.address else ""
        return f"embedded Kafka broker{where}: {self.reason}"


class EncodingError(DiLifespanError, TypeError):
    """A value, key or header to publish cannot be turned into bytes; nothing was sent.

    ``what`` names it ("a value of type Price", "header 'trace'"). A handler whose result
    cannot be encoded is dead-lettered at once: another attempt would run its side effects
    again and fail the same way.
    """

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(what, reason)

    def __str__(self) -> str:
        return f"cannot publish {self.what}: {self.reason}"


class HandlerTimeoutError(DiLifespanError):
    """A handler ran longer than its subscriber's ``handler_timeout`` and was cancelled.

    It counts as the handler's failure: the message is tried again per the subscriber's
    ``retry``, then dead-lettered. ``handler`` names the handler, ``seconds`` the limit.
    """

    def __init__(self, handler: str, seconds: float) -> None:
        self.handler = handler
        self.seconds = seconds
        super().__init__(handler, seconds)

    def __str__(self) -> str:
        return (
            f"handler {self.handler} ran longer than its handler_timeout of {self.seconds:g} s"
            " and was cancelled"
        )


class ShutdownStepError(DiLifespanError):
    """One step of a shutdown failed: a finalizer, a hook or the user's lifespan."""

    def __init__(self, step: str, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(step, reason)

    def __str__(self) -> str:
        return f"{self.step} failed: {self.reason}"


class ShutdownTimeoutError(ShutdownStepError):
    """A finalizer or shutdown hook outlived its time limit; it was cancelled or left behind."""

    def __init__(self, step: str, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(step, f"did not finish within {timeout:g} s")


class ShutdownError(DiLifespanError, ExceptionGroup[ShutdownStepError]):
    """Every failed step of one shutdown, together; all the other steps still ran."""

    def __new__(cls, message: str, errors: Sequence[ShutdownStepError]) -> Self:
        return super().__new__(cls, message, errors)

    def __init__(self, message: str, errors: Sequence[ShutdownStepError]) -> None:
        super().__init__(message, errors)

    @property
    def exceptions(self) -> tuple[ShutdownStepError, ...]:
        """The failed steps, in the order they ran (never nested groups)."""
        # ExceptionGroup types its items as "an error or a nested group"; a ShutdownError is
        # built from steps only, and derive() keeps it flat, so each item is a step.
        return super().exceptions  # type: ignore[return-value]  # flat by construction, see above

    def derive(self, excs: Sequence[ShutdownStepError]) -> ShutdownError:  # type: ignore[override]  # narrower element type than ExceptionGroup's
        return ShutdownError(self.message, excs)

    def __str__(self) -> str:
        steps = "; ".join(str(error) for error in self.exceptions)
        return f"{self.message}: {steps}"


# Log lines and dead-letter headers stay small whatever a message holds: input values are
# user data (a 2 MB body, a huge field), so only an excerpt of each is shown.
EXCERPT_LIMIT = 200  # characters of one input value, field path or pydantic message
DESCRIBE_LIMIT = 2000  # characters of a whole description
LISTED_ERRORS = 10  # fields of a ValidationError named one by one


def debug_traceback(error: BaseException | None) -> BaseException | None:
    """``error``, for a log record's ``exc_info``, only while DEBUG logging is on."""
    debugging = logging.getLogger("di_lifespan").isEnabledFor(logging.DEBUG)
    return error if debugging else None


def log_error(error: BaseException, traceback: BaseException | None = None) -> None:
    """Log ``error`` as one ERROR line; operators read one line per failure.

    The traceback (of ``traceback``, else of ``error``) is added with DEBUG logging only.
    """
    shown = debug_traceback(traceback if traceback is not None else error)
    logging.getLogger("di_lifespan").error("%s", error, exc_info=shown)


def describe(error: BaseException) -> str:
    """Return ``Type: message`` for an error, the way log lines and reports show a cause.

    A pydantic ValidationError becomes one line naming each wrong field (the first
    ``LISTED_ERRORS``), with an excerpt of at most ``EXCERPT_LIMIT`` characters of each
    input; the whole text is cut at ``DESCRIBE_LIMIT`` characters.
    """
    if isinstance(error, ValidationError):
        return shorten(f"{error.title} is invalid: {_fields(error)}", DESCRIBE_LIMIT)
    if isinstance(error, BaseExceptionGroup) and not isinstance(error, DiLifespanError):
        # A task group's wrapper says nothing; what failed inside it does.
        leaves = _leaves(error)
        if len(leaves) == 1:
            return describe(leaves[0])
        listed = "; ".join(describe(leaf) for leaf in leaves[:LISTED_ERRORS])
        return shorten(f"{len(leaves)} errors: {listed}", DESCRIBE_LIMIT)
    text = str(error)
    name = type(error).__name__
    described = text if text.startswith(f"{name}:") else f"{name}: {text}" if text else name
    return shorten(described, DESCRIBE_LIMIT)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves


def _fields(error: ValidationError) -> str:
    items = error.errors(include_url=False, include_context=False)
    fields = "; ".join(
        f"{shorten('.'.join(str(part) for part in item['loc']) or '(value)', EXCERPT_LIMIT)}:"
        f" {shorten(item['msg'], EXCERPT_LIMIT)}"
        + ("" if item["type"] == "missing" else f" (got {excerpt(item['input'])})")
        for item in items[:LISTED_ERRORS]
    )
    if len(items) > LISTED_ERRORS:
        fields += f"; and {len(items) - LISTED_ERRORS} more"
    return fields


def excerpt(value: Any, limit: int = EXCERPT_LIMIT) -> str:
    """``repr(value)``, cut to about ``limit`` characters without building the whole of it."""
    if isinstance(value, str | bytes | bytearray) and len(value) > limit:
        # the repr of a slice: a 2 MB body is never copied into a 2 MB string first
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{repr(value[:limit])[:limit]}... ({len(value)} {unit})"
    return shorten(_short_repr().repr(value), limit)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _short_repr() -> reprlib.Repr:
    """A repr that stops early inside big containers (it never walks a million items)."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = EXCERPT_LIMIT
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = short.maxfrozenset = 20
    return short
