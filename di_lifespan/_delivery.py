"""At-least-once delivery: fetch a batch, handle each message, publish, then commit.

Per subscriber, one loop: fetch a batch from the consumer; hand each message to the handler
(partition by partition, in offset order; up to ``max_concurrency`` partitions at once);
publish what the handler returned; retry a failing handler with backoff, then send the message
to the dead-letter topic; once every message the batch caused is acknowledged, commit the batch's
offsets. A message whose handling did not finish is never committed, so it is read again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from ._broker import Broker, Consumer, Delivery, Subscription, TopicPartition
from ._codec import encode
from ._errors import (
    DeliveryError,
    EncodingError,
    ShutdownStepError,
    ShutdownTimeoutError,
    StartupError,
    StartupTimeoutError,
    debug_traceback,
    describe,
    log_error,
)
from ._handlers import BoundHandler, InvalidBodyError
from ._limits import StopShields, TimeLimit, is_stray_cancellation
from ._message import Headers, Message

__all__ = [
    "DEAD_LETTER_HEADERS",
    "ErrorReport",
    "Outgoing",
    "Publisher",
    "SubscriberLoop",
    "Subscribers",
]

logger = logging.getLogger("di_lifespan")

# The acknowledgements the message being handled is waiting for, set per subscriber loop.
_pending: ContextVar[list[Delivery] | None] = ContextVar("di_lifespan_pending", default=None)

# What each header of a dead letter says, by the name our code and users' code look it up with.
DEAD_LETTER_HEADERS = MappingProxyType(
    {
        "error_type": "x-error-type",
        "error": "x-error",
        "topic": "x-original-topic",
        "partition": "x-original-partition",
        "offset": "x-original-offset",
        "attempts": "x-attempts",
    }
)
MAX_RECORDS = 500
# A commit comes at least this often while a batch is being handled, so that a crash or a
# rebalance re-delivers at most this much: messages handled, or seconds.
COMMIT_EVERY = 100
COMMIT_INTERVAL = 1.0
MAX_ERROR_HEADER = 4096  # bytes of x-error: a dead letter must stay as sendable as its input
ErrorReport = Callable[[BaseException], None]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A value to publish with a key or headers of its own: return it from a handler."""

    value: Any
    key: str | bytes | None = None
    headers: Headers | None = None


class Publisher:
    """Publishes messages: inject it as ``FromDishka[Publisher]``, or use ``app.publish``.

    Inside a handler a send is pipelined: the incoming message's offset is committed only
    once the broker has acknowledged it. Anywhere else ``publish`` waits for the
    acknowledgement.
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    async def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: str | bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Send ``value`` (bytes as they are, str as UTF-8, anything else as JSON).

        Raises EncodingError for a value, key or header that cannot be encoded.
        """
        body, key_bytes, header_bytes = encode(value, key, headers)
        delivery = await self._broker.send(topic, body, key=key_bytes, headers=header_bytes)
        if delivery is None:
            return
        pending = _pending.get()
        if pending is None:
            await delivery
        else:
            pending.append(delivery)


class _Interrupted(Exception):  # noqa: N818  # not an error: the app stopped during a retry pause
    """A retry's pause was cut short by a stop; the message stays uncommitted."""


# Failures that would recur on every attempt: the message is dead-lettered at once.
_NOT_RETRIED = (InvalidBodyError, EncodingError, _Interrupted)


class SubscriberLoop:
    """Reads one subscriber's consumer until stopped, and delivers each message to its handler.

    Nothing is fetched before ``deliver()`` (the app's after_startup hooks have passed). With
    ``max_concurrency`` 1, each fetched batch is handled in order, then committed. Above 1, each
    partition gets a queue and a worker; up to ``max_concurrency`` workers run at once, a
    partition's messages stay in order, and a worker commits what is done whenever its queue
    runs dry, so a slow partition holds up no other.
    """

    def __init__(
        self,
        handler: BoundHandler,
        consumer: Consumer,
        broker: Broker,
        shields: StopShields,
        report_error: ErrorReport | None = None,
    ) -> None:
        spec = handler.spec
        self.name = spec.name
        self._handler = handler
        self._consumer = consumer
        self._broker = broker
        self._shields = shields
        self._publish_to = tuple(spec.publish_to)
        self._retry = spec.retry
        self._dead_letter = spec.dead_letter
        self.concurrency = spec.max_concurrency
        self._report_error = report_error
        self._deliveries: list[Delivery] = []
        self._done: dict[TopicPartition, int] = {}
        self._settling = anyio.Lock()
        self._since_commit = 0
        self._committed_at = time.monotonic()
        self._stopping = False
        self._stopped = anyio.Event()  # stop() was called: cuts retry pauses short
        self._open = anyio.Event()  # deliver() or stop() was called
        self.finished = anyio.Event()

    async def run(self) -> None:
        """Deliver messages until stop(); always leave the consumer group at the end.

        Raises DeliveryError when the transport fails under it (a send or commit that cannot
        succeed); a handler's own failure never ends the loop.
        """
        _pending.set(self._deliveries)
        try:
            await self._open.wait()
            if self._stopping:
                return
            if self.concurrency == 1:
                await self._run_in_order()
            else:
                await _PartitionWorkers(self).run()
            await self.settle()
        except DeliveryError:
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as error:
            # SystemExit or KeyboardInterrupt out of a handler (a library calling sys.exit())
            # stops the app like a transport failure: gracefully, and named.
            raise DeliveryError(self.name, describe(error)) from error
        finally:
            try:
                with self._shields.shield():
                    await self._consumer.close()
            except Exception as error:
                raise DeliveryError(
                    self.name, f"leaving its consumer group failed: {describe(error)}"
                ) from error
            finally:
                self.finished.set()

    def deliver(self) -> None:
        """Start handling messages (the app is ready)."""
        self._open.set()

    def stop(self) -> None:
        """Finish the message in hand, commit, and return; the rest is read again later."""
        self._stopping = True
        self._stopped.set()
        self._open.set()
        self._consumer.stop()

    async def fetch(self) -> Sequence[Message]:
        return await self._consumer.fetch(MAX_RECORDS)

    async def _run_in_order(self) -> None:
        while batch := await self.fetch():
            for message in batch:
                if self._stopping:
                    break
                await self.deliver_one(message)
                if self.commit_due():
                    await self.settle()
            await self.settle()

    def commit_due(self) -> bool:
        """Count one more message done; whether it is time to commit in mid-batch."""
        self._since_commit += 1
        return (
            self._since_commit >= COMMIT_EVERY
            or time.monotonic() - self._committed_at >= COMMIT_INTERVAL
        )

    async def deliver_one(self, message: Message) -> None:
        """Handle one message to its end (result published, or dead-lettered), mark it done.

        A message whose retries a stop interrupted is not marked done: it is read again.
        Raises DeliveryError, with the message's coordinates, when even the dead-letter
        topic cannot take it, or when the handler raised SystemExit or KeyboardInterrupt.
        """
        try:
            await self._handle(message)
        except _Interrupted:
            return  # a stop cut its retries short: not done, so not committed
        except (Exception, SystemExit, KeyboardInterrupt) as error:
            # Caught here, in the task that ran the handler: asyncio lets a SystemExit that
            # leaves a task end the whole event loop.
            raise DeliveryError(
                self.name,
                describe(error),
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            ) from error

    async def _handle(self, message: Message) -> None:
        try:
            await self._attempt(message)
        except InvalidBodyError as error:
            if self._report_error is not None:
                self._report_error(error.__cause__ or error)
            else:
                await self._give_up(message, error, reason=f"has an invalid body: {error.reason}")
        except EncodingError as error:
            # not retried: another attempt would re-run the handler's side effects and fail alike
            if self._report_error is not None:
                self._report_error(error)
            else:
                await self._give_up(message, error, reason=f"failed: {describe(error)}")
        except Exception as error:  # noqa: BLE001  # a handler's failure is retried, then dead-lettered
            await self._failed(message, error)
        except anyio.get_cancelled_exc_class() as error:
            if not is_stray_cancellation(error):
                raise
            # The handler awaited something another task cancelled: that is its failure.
            await self._failed(message, HandlerCancelledError())
        self._done[(message.topic, message.partition)] = message.offset + 1

    async def _failed(self, message: Message, error: Exception) -> None:
        if self._report_error is not None:
            self._report_error(error)
        elif self._retry is not None and self._retry.attempts > 1:
            await self._retry_from(message, error)
        else:
            await self._give_up(message, error, reason=f"failed: {describe(error)}")

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def settle(self) -> None:
        """Wait for the acknowledgement of every message sent so far, then commit what is done."""
        async with self._settling:
            self._since_commit = 0
            self._committed_at = time.monotonic()
            done = self._done.copy()
            self._done.clear()
            if self._deliveries:
                deliveries = self._deliveries[:]
                self._deliveries.clear()
                for delivery in deliveries:
                    await delivery
            if done:
                await self._consumer.commit(done)

    async def _attempt(self, message: Message) -> None:
        result = await self._handler(message)
        if result is None or not self._publish_to:
            return
        if isinstance(result, Outgoing):
            value, key, headers = encode(result.value, result.key, result.headers)
        else:
            value, key, headers = encode(result, message.key)
        for topic in self._publish_to:
            delivery = await self._broker.send(topic, value, key=key, headers=headers)
            if delivery is not None:
                self._deliveries.append(delivery)

    async def _retry_from(self, message: Message, first_error: Exception) -> None:
        retry = self._retry
        assert retry is not None  # only called with a retry policy  # noqa: S101
        retrying = AsyncRetrying(
            stop=stop_after_attempt(retry.attempts),
            wait=wait_exponential(multiplier=retry.backoff, max=retry.max_backoff),
            sleep=self._pause,
            reraise=True,
            # A cancellation (a stop, the graceful timeout) ends the retries: never retried.
            retry=retry_if_not_exception_type((*_NOT_RETRIED, anyio.get_cancelled_exc_class())),
            before_sleep=lambda state: self._log_retry(message, state),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    if number == 1:
                        raise first_error  # noqa: TRY301  # tenacity counts the failure already seen as attempt 1
                    message.attempt = number
                    await self._attempt_guarded(message)
        except _Interrupted:
            raise
        except Exception as error:  # noqa: BLE001  # retries are spent: dead-letter it
            await self._give_up(message, error, reason=f"failed: {describe(error)}")

    async def _attempt_guarded(self, message: Message) -> None:
        """One more attempt, where a stray cancellation counts as the handler's failure."""
        try:
            await self._attempt(message)
        except anyio.get_cancelled_exc_class() as error:
            if not is_stray_cancellation(error):
                raise
            raise HandlerCancelledError() from error

    async def _pause(self, seconds: float) -> None:
        """Wait before the next attempt; a stop ends the wait and the retries."""
        with anyio.move_on_after(seconds):
            await self._stopped.wait()
        if self._stopping:
            raise _Interrupted

    def _log_retry(self, message: Message, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "handler %s: %s failed (attempt %d of %d), retrying in %.2fs: %s",
            self.name,
            message.coordinates,
            state.attempt_number,
            self._retry.attempts if self._retry else 1,
            pause,
            describe(error) if error else "",
            extra=log_fields(self.name, message),
        )

    async def _give_up(self, message: Message, error: Exception, *, reason: str) -> None:
        attempts = message.attempt
        topic = self._dead_letter_topic(message)
        # One line per failure; the handler's traceback when debug logging is on.
        traceback = None if isinstance(error, InvalidBodyError) else debug_traceback(error)
        if topic is None:
            logger.error(
                "handler %s: %s %s; dropped after %d attempt(s) (dead_letter=None)",
                self.name,
                message.coordinates,
                reason,
                attempts,
                exc_info=traceback,
                extra=log_fields(self.name, message),
            )
            return
        headers = {**message.headers, **_dead_letter_headers(message, error, attempts)}
        delivery = await self._broker.send(topic, message.value, key=message.key, headers=headers)
        if delivery is not None:
            self._deliveries.append(delivery)
        logger.error(
            "handler %s: %s %s; sent to %s after %d attempt(s)",
            self.name,
            message.coordinates,
            reason,
            topic,
            attempts,
            exc_info=traceback,
            extra=log_fields(self.name, message),
        )

    def _dead_letter_topic(self, message: Message) -> str | None:
        if self._dead_letter is None:
            return None
        return self._dead_letter.replace("{topic}", message.topic)


class HandlerCancelledError(Exception):
    """A handler raised CancelledError without being cancelled: a failure like any other."""

    def __init__(self) -> None:
        super().__init__(
            "the handler raised CancelledError without being cancelled"
            " (it awaited something another task cancelled)"
        )


def log_fields(handler: str, message: Message) -> dict[str, Any]:
    """The ``extra=`` of a delivery log record: which handler, and the message's coordinates."""
    return {
        "handler": handler,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
    }


def _dead_letter_headers(message: Message, error: Exception, attempts: int) -> dict[str, bytes]:
    cause = error.__cause__ if isinstance(error, InvalidBodyError) and error.__cause__ else error
    text = error.reason if isinstance(error, InvalidBodyError) else str(error)
    return {
        DEAD_LETTER_HEADERS["error_type"]: type(cause).__name__.encode(),
        DEAD_LETTER_HEADERS["error"]: _truncated(text, MAX_ERROR_HEADER),
        DEAD_LETTER_HEADERS["topic"]: message.topic.encode(),
        DEAD_LETTER_HEADERS["partition"]: str(message.partition).encode(),
        DEAD_LETTER_HEADERS["offset"]: str(message.offset).encode(),
        DEAD_LETTER_HEADERS["attempts"]: str(attempts).encode(),
    }


def _truncated(text: str, limit: int) -> bytes:
    """``text`` as UTF-8 of at most ``limit`` bytes, cut on a character boundary, with a marker."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return encoded
    marker = f"... (cut; {len(encoded)} bytes in all)".encode()
    # "ignore" drops the partial character the byte cut may leave at the end
    head = encoded[: limit - len(marker)].decode("utf-8", errors="ignore").encode()
    return head + marker


class _PartitionWorkers:
    """One queue and one worker task per partition, at most ``max_concurrency`` running."""

    def __init__(self, loop: SubscriberLoop) -> None:
        self._loop = loop
        self._limiter = anyio.CapacityLimiter(loop.concurrency)
        self._queues: dict[TopicPartition, deque[Message]] = {}
        self._queued = 0
        self._progress = anyio.Event()

    async def run(self) -> None:
        """Feed the partitions' queues until the consumer is stopped.

        A worker's failure (its transport failed) ends them all; it is raised as it is, not
        wrapped in the task group's ExceptionGroup, so the subscriber's error names it.
        """
        try:
            await self._feed()
        except BaseExceptionGroup as group:
            raise _first_leaf(group) from None

    async def _feed(self) -> None:
        async with anyio.create_task_group() as workers:
            while batch := await self._loop.fetch():
                for message in batch:
                    key = (message.topic, message.partition)
                    queue = self._queues.get(key)
                    if queue is None:
                        queue = self._queues[key] = deque()
                        workers.start_soon(self._work, key, queue)
                    queue.append(message)
                self._queued += len(batch)
                while self._queued >= MAX_RECORDS and not self._loop.stopping:
                    await self._progress.wait()  # backpressure: fetch more once workers catch up

    async def _work(self, key: TopicPartition, queue: deque[Message]) -> None:
        async with self._limiter:
            while queue and not self._loop.stopping:
                await self._loop.deliver_one(queue.popleft())
                self._queued -= 1
                self._progress.set()
                self._progress = anyio.Event()
                if self._loop.commit_due():
                    await self._loop.settle()
            del self._queues[key]
        await self._loop.settle()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


class Subscribers:
    """The subscriber loops of one run, in a task group the run holds from startup to shutdown.

    A loop that crashes (its transport failed) is recorded and ``on_crash`` asks the run to
    stop: the other loops finish their message in hand and commit, as on any graceful stop.
    """

    def __init__(self, shields: StopShields, on_crash: Callable[[], None]) -> None:
        self._shields = shields
        self._on_crash = on_crash
        self._loops: list[SubscriberLoop] = []
        self._scopes: list[anyio.CancelScope] = []
        self.crashes: list[ShutdownStepError] = []

    async def start(
        self,
        tasks: TaskGroup,
        broker: Broker,
        handlers: Sequence[BoundHandler],
        limit: float,
        report_error: ErrorReport | None = None,
    ) -> None:
        """Subscribe each handler and start its loop, held back until ``deliver()``.

        Each subscription gets ``limit`` seconds; a failure raises StartupError naming it.
        With ``report_error``, a handler's failure is handed to it instead of being retried
        and dead-lettered (the test client raises it in the test).
        """
        consumers: dict[int, Consumer] = {}
        failures: list[StartupError] = []
        # Concurrently: on Kafka each group's first join takes a second or more.
        async with anyio.create_task_group() as joining:
            for index, handler in enumerate(handlers):
                keep = partial(consumers.__setitem__, index)
                joining.start_soon(self._subscribe, broker, handler, limit, keep, failures)
        if failures:
            with self._shields.shield():
                for consumer in consumers.values():
                    await consumer.close()
            raise failures[0]
        for index, handler in enumerate(handlers):
            loop = SubscriberLoop(handler, consumers[index], broker, self._shields, report_error)
            self._loops.append(loop)
            tasks.start_soon(self._run, loop, name=f"subscriber {handler.spec.name}")

    @staticmethod
    async def _subscribe(
        broker: Broker,
        handler: BoundHandler,
        limit: float,
        keep: Callable[[Consumer], None],
        failures: list[StartupError],
    ) -> None:
        """Subscribe one handler within ``limit``; record a failure instead of raising it."""
        spec = handler.spec
        what = f"subscriber {spec.name} ({', '.join(spec.topics)})"
        consumer: Consumer | None = None
        try:
            with TimeLimit(limit) as time_limit:
                consumer = await broker.subscribe(Subscription(spec.topics, spec.group, spec.name))
        except Exception as error:  # noqa: BLE001  # recorded; start() raises the first
            failure = StartupError(what, describe(error))
            failure.__cause__ = error
            failures.append(failure)
            return
        if consumer is not None:  # also one that came late: start() closes it
            keep(consumer)
        if time_limit.exceeded:
            failures.append(StartupTimeoutError(what, limit))

    async def _run(self, loop: SubscriberLoop) -> None:
        # Shielded: a cancelled caller (a signal, a cancelled `async with app`) must not cut
        # off the message in hand; only stop(), the graceful timeout or a forced stop end it.
        with self._shields.shield() as scope:
            self._scopes.append(scope)
            try:
                await loop.run()
            except DeliveryError as error:
                self.crashes.append(_crash(error))
                self._on_crash()

    def deliver(self) -> None:
        """Let every loop hand messages to its handler."""
        for loop in self._loops:
            loop.deliver()

    async def stop(self, graceful_timeout: float) -> list[ShutdownStepError]:
        """Ask every loop to finish its message in hand and commit, within ``graceful_timeout``.

        Loops still busy after it are cancelled (a sync handler's thread is abandoned): their
        messages are not committed and are read again. Each is returned as a timeout.
        """
        for loop in self._loops:
            loop.stop()
        with anyio.move_on_after(graceful_timeout):
            for loop in self._loops:
                await loop.finished.wait()
        unfinished = [loop for loop in self._loops if not loop.finished.is_set()]
        if not unfinished:
            return []
        for scope in self._scopes:
            scope.cancel()
        failures: list[ShutdownStepError] = []
        for loop in unfinished:
            failure = ShutdownTimeoutError(
                f"subscriber {loop.name} (graceful_timeout)", graceful_timeout
            )
            logger.error("%s; its message in hand is not committed", failure)
            failures.append(failure)
        return failures


def _crash(error: DeliveryError) -> ShutdownStepError:
    failure = ShutdownStepError(f"subscriber {error.subscriber}", error.reason)
    failure.__cause__ = error
    log_error(error)
    return failure
