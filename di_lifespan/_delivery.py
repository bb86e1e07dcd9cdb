"""At-least-once delivery: fetch a batch, handle each message, publish, then commit.

Per subscriber, one loop: fetch a batch from the consumer; hand each message to the handler
(partition by partition, in offset order; up to ``max_concurrency`` partitions at once);
publish what the handler returned; retry a failing handler with backoff, then send the message
to the dead-letter topic; once every message the batch caused is acknowledged, commit the batch's
offsets. A message whose handling did not finish is never committed, so it is read again.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from ._broker import Broker, Consumer, Delivery, PartitionStatus, Subscription, TopicPartition
from ._codec import encode
from ._errors import (
    DeliveryError,
    EncodingError,
    HandlerTimeoutError,
    SendRejectedError,
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
from ._metrics import NO_METRICS, NO_OBSERVER, HandlerCall, Metrics, SubscriberObserver

__all__ = [
    "DEAD_LETTER_HEADERS",
    "ErrorReport",
    "Outgoing",
    "Publisher",
    "SubscriberLoop",
    "Subscribers",
]

logger = logging.getLogger("di_lifespan")

# A send and the input it was caused by; for that input's dead letter, the failure it carries.
_Sent = tuple[Delivery, Message, Exception | None]

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
# Messages a fetch returns at most. Fetches, commits and produce requests cost about the same
# whatever their size: fewer, larger ones took Kafka throughput from 18,000 to 35,000 msg/s.
MAX_RECORDS = 2000
# A subscriber's queues hold about QUEUED_MESSAGES in all, shared among its partitions, at
# least PARTITION_QUEUE_MIN each: a partition whose queue is full is paused until it is down to
# a tenth. The more each holds the better: aiokafka drops what it had fetched ahead for a
# partition it pauses (one fetch holds about 15,000 small messages), and a pause often leaves a
# worker waiting for the fetch again; a limit of 5,000 for 4 partitions cost a third more CPU
# per message than 25,000.
QUEUED_MESSAGES = 100_000
PARTITION_QUEUE_MIN = 5000
TURN = 100  # messages a worker handles from one partition while others wait for a worker
RETRY_COMMIT_EVERY = 0.2  # seconds between tries of a commit a rebalance held back
MAX_UNACKED = 10_000  # sends awaiting acknowledgement before handlers wait for the committer
# A commit is due after this many messages handled, or this many seconds: that bounds what a
# crash re-delivers (a rebalance or a stop commits at once). Commits are spaced at least
# COMMIT_SPACING apart: each costs about the same whatever it covers, so under load one
# commit covers what was handled since the last (one per 100 messages took Kafka throughput
# from 35,000 to 18,000 msg/s).
COMMIT_EVERY = 100
COMMIT_INTERVAL = 1.0
COMMIT_SPACING = 0.05
MAX_ERROR_HEADER = 4096  # bytes of x-error: a dead letter must stay as sendable as its input
COMPACT_ERROR_HEADER = 256  # bytes of x-error in the second try of a dead letter refused
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
        tracker = _pending.get()
        if tracker is None:
            await delivery
        else:
            tracker.add(delivery)


class _Tracker:
    """A worker's message in hand: what it publishes is acknowledged before its commit."""

    __slots__ = ("_loop", "message")

    def __init__(self, loop: SubscriberLoop) -> None:
        self._loop = loop
        self.message: Message | None = None

    def add(self, delivery: Delivery) -> None:
        message = self.message
        assert message is not None  # only set while a message is handled  # noqa: S101
        self._loop.add_delivery(delivery, message)


# The message in hand of the worker a handler runs in, set per worker task.
_pending: ContextVar[_Tracker | None] = ContextVar("di_lifespan_pending", default=None)


class _Interrupted(Exception):  # noqa: N818  # not an error: the app stopped during a retry pause
    """A retry's pause was cut short by a stop; the message stays uncommitted."""


# Failures that would recur on every attempt: the message is dead-lettered at once.
_NOT_RETRIED = (InvalidBodyError, EncodingError, SendRejectedError, _Interrupted)


class SubscriberLoop:
    """Reads one subscriber's consumer until stopped, and delivers each message to its handler.

    Nothing is fetched before ``deliver()`` (the app's after_startup hooks have passed). Then
    three kinds of task run at once, so that fetching, handling and acknowledgements overlap:

    - the fetcher keeps polling the consumer (the group must never think it is dead) and
      puts each message in its partition's queue; a full queue (``QUEUED_MESSAGES`` shared by
      the partitions owned, ``PARTITION_QUEUE_MIN`` at least) gets its partition paused until it
      is down to a tenth;
    - ``max_concurrency`` workers each take a partition with queued messages and handle them
      in offset order; a partition is held by one worker at a time, and handed back after
      ``TURN`` messages when other partitions are waiting;
    - the committer waits for the acknowledgement of everything the handled messages caused,
      then commits their offsets, every ``COMMIT_EVERY`` messages or ``COMMIT_INTERVAL``
      seconds, and whenever the queues run dry; commits are ``COMMIT_SPACING`` apart at least.

    It is the consumer's ``Assignment``: before partitions are revoked it drops their queued
    messages, lets the message in hand finish (within ``graceful_timeout``) and commits
    exactly those partitions.
    """

    def __init__(
        self,
        handler: BoundHandler,
        broker: Broker,
        shields: StopShields,
        report_error: ErrorReport | None = None,
        graceful_timeout: float = 30.0,
        *,
        observer: SubscriberObserver = NO_OBSERVER,
    ) -> None:
        self.spec = spec = handler.spec
        self.name = spec.name
        self.consumer: Consumer | None = None  # set once subscribed
        call = observer.wrap(handler)  # metrics off: the handler itself
        if spec.handler_timeout is not None:
            call = _time_limited(call, spec.handler_timeout, spec.name)
        self._handler = call
        self._observer = observer
        self._broker = broker
        self._shields = shields
        self._publish_to = tuple(spec.publish_to)
        self._retry = spec.retry
        self._dead_letter = spec.dead_letter
        self.concurrency = spec.max_concurrency
        self._report_error = report_error
        self._graceful_timeout = graceful_timeout
        self._deliveries: list[_Sent] = []
        self._done: dict[TopicPartition, int] = {}
        self._settling = anyio.Lock()
        self._since_commit = 0
        self._queues: dict[TopicPartition, deque[Message]] = {}
        self._busy: set[TopicPartition] = set()  # held by a worker
        self._scheduled: set[TopicPartition] = set()  # waiting for a worker
        self._paused: set[TopicPartition] = set()
        self._owned: set[TopicPartition] = set()  # assigned, not revoked since
        self._queue_limit = QUEUED_MESSAGES  # a partition's queue; see _share_queues
        self._revoked: set[TopicPartition] = set()  # being taken away, not given back since
        self._handed_over: set[TopicPartition] = set()  # revoke settled: commit nothing more
        self._ready: deque[TopicPartition] = deque()  # partitions waiting for a worker
        self._ready_count = anyio.Semaphore(0)  # one release per partition put in _ready
        self._released = anyio.Event()  # a worker handed a partition back
        self._commit_wanted = anyio.Event()
        self._acked = anyio.Event()  # the committer settled
        self._closing = False
        self._failure: BaseException | None = None
        self._stopping = False
        self._stopped = anyio.Event()  # stop() was called: cuts retry pauses short
        self._open = anyio.Event()  # deliver() or stop() was called
        self.finished = anyio.Event()

    # --- the consumer's Assignment --------------------------------------------------------

    def assigned(self, partitions: Collection[TopicPartition]) -> None:
        """The group gave these partitions to this subscriber."""
        self._revoked.difference_update(partitions)
        self._handed_over.difference_update(partitions)
        self._owned.update(partitions)
        self._share_queues()

    def _share_queues(self) -> None:
        self._queue_limit = max(PARTITION_QUEUE_MIN, QUEUED_MESSAGES // max(1, len(self._owned)))

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        """Drop their queued messages, finish the one in hand, commit exactly these."""
        gone = set(partitions)
        self._revoked |= gone
        self._paused -= gone
        self._owned -= gone
        self._share_queues()
        dropped = 0
        for partition in gone:
            queue = self._queues.pop(partition, None)
            if queue:
                dropped += len(queue)
                queue.clear()  # in place: a worker holding it stops after its message in hand
        with anyio.move_on_after(self._graceful_timeout):
            while self._busy & gone:
                await self._released.wait()
        try:
            await self.settle(gone)
        except Exception as error:  # noqa: BLE001  # a failed commit stops the subscriber
            self._fail(error)
        # What finishes from now on belongs to the partitions' next owner: never committed here.
        self._handed_over |= gone
        logger.info(
            "subscriber %s: partitions %s revoked%s",
            self.name,
            ", ".join(f"{topic}[{partition}]" for topic, partition in sorted(gone)),
            f"; {dropped} fetched message(s) left to their next owner" if dropped else "",
        )

    # --- running --------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver messages until stop(); always leave the consumer group at the end.

        Raises DeliveryError when the transport fails under it (a send, fetch or commit that
        cannot succeed); a handler's own failure never ends the loop.
        """
        failed: DeliveryError | None = None
        try:
            await self._open.wait()
            if not self._stopping:
                await self._run_tasks()
            if self._failure is None:  # after a transport failure, what is done may not be acked
                await self._settle_last()
            self._raise_failure()
        except DeliveryError as error:
            failed = error
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as error:
            # SystemExit or KeyboardInterrupt out of a handler (a library calling sys.exit())
            # stops the app like a transport failure: gracefully, and named.
            failed = DeliveryError(self.name, describe(error))
            raise failed from error
        finally:
            await self._leave(failed)

    async def _settle_last(self) -> None:
        """Commit what is done; a commit a rebalance held back is tried again, within bounds.

        A stop often meets a rebalance (a rolling deploy starts the next member as this one
        stops): the revoke then commits those offsets, or a later try does.
        """
        await self.settle()
        with anyio.move_on_after(self._graceful_timeout):
            while self._done:
                await anyio.sleep(RETRY_COMMIT_EVERY)
                await self.settle()

    async def _run_tasks(self) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._commit_when_due)
            async with anyio.create_task_group() as workers:
                for number in range(self.concurrency):
                    workers.start_soon(self._work, name=f"{self.name} worker {number}")
                await self._fetch_all()
            self._closing = True  # every worker returned: the final settle is run()'s
            self._commit_wanted.set()

    async def _leave(self, failed: DeliveryError | None) -> None:
        """Close the consumer. Its failure is raised, or noted on the run's own failure."""
        consumer = self.consumer
        try:
            if consumer is not None:
                with self._shields.shield():
                    await consumer.close()
        except (Exception, anyio.get_cancelled_exc_class()) as error:
            if not isinstance(error, Exception) and not is_stray_cancellation(error):
                raise  # a real cancellation (a forced stop)
            # A client's own CancelledError out of its close is a failed close.
            leaving = DeliveryError(
                self.name, f"leaving its consumer group failed: {describe(error)}"
            )
            if failed is None:
                raise leaving from error
            failed.add_note(f"then {leaving}")  # the first failure is the one to act on
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
        for _ in range(self.concurrency):
            self._ready_count.release()  # idle workers wake up, and return
        self._acked.set()  # workers waiting for acknowledgements go on to their end
        if self.consumer is not None:
            self.consumer.stop()

    def add_delivery(self, delivery: Delivery, message: Message) -> None:
        """Count ``delivery`` among what ``message`` caused: awaited before it is committed."""
        self._deliveries.append((delivery, message, None))

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fail(self, error: BaseException) -> None:
        """Remember the first failure and stop: the other workers finish their message."""
        if self._failure is None:
            self._failure = error
        self.stop()

    # --- the fetcher ----------------------------------------------------------------------

    async def _fetch_all(self) -> None:
        consumer = self.consumer
        assert consumer is not None  # subscribed before it runs  # noqa: S101
        try:
            while batch := await consumer.fetch(MAX_RECORDS):
                self._dispatch(batch)
        except Exception as error:  # noqa: BLE001  # the transport failed: stop, named
            self._fail(error)

    def _dispatch(self, batch: Sequence[Message]) -> None:
        """Queue each message in its partition's queue; pause a partition whose queue is full."""
        queues, revoked = self._queues, self._revoked
        touched: list[TopicPartition] = []
        last: TopicPartition | None = None
        queue: deque[Message] | None = None
        for message in batch:
            partition = (message.topic, message.partition)
            if partition != last:
                last = partition
                if revoked and partition in revoked:
                    queue = None  # fetched just before it was taken away
                    continue
                queue = queues.get(partition)
                if queue is None:
                    queue = queues[partition] = deque()
                touched.append(partition)
            if queue is not None:
                queue.append(message)
        limit = self._queue_limit
        full = [p for p in touched if len(queues[p]) >= limit and p not in self._paused]
        if full:
            self._paused.update(full)
            assert self.consumer is not None  # noqa: S101  # fetching, so subscribed
            self.consumer.pause(full)
        for partition in touched:
            self._schedule(partition)

    def _schedule(self, partition: TopicPartition) -> None:
        if partition in self._busy or partition in self._scheduled or self._stopping:
            return
        self._scheduled.add(partition)
        self._ready.append(partition)
        self._ready_count.release()

    # --- the workers ----------------------------------------------------------------------

    async def _work(self) -> None:
        tracker = _Tracker(self)
        _pending.set(tracker)
        while True:
            await self._ready_count.acquire()
            if self._stopping:
                return
            partition = self._ready.popleft()
            self._scheduled.discard(partition)
            queue = self._queues.get(partition)
            if not queue or partition in self._busy:
                continue
            self._busy.add(partition)
            try:
                await self._drain(partition, queue, tracker)
            except DeliveryError as error:
                self._fail(error)
                return
            finally:
                self._release(partition)

    async def _drain(
        self, partition: TopicPartition, queue: deque[Message], tracker: _Tracker
    ) -> None:
        """Handle the partition's queued messages in order, until a stop or its turn ends."""
        handled = 0
        revoked, paused = self._revoked, self._paused  # changed in place, never replaced
        while queue and not self._stopping and not (revoked and partition in revoked):
            message = tracker.message = queue.popleft()
            # The common case inline (this loop is the hot path); failures go to _recover.
            try:
                await self._attempt(message)
            except BaseException as error:  # noqa: BLE001  # sorted out by _recover
                if not await self._recover(message, error):
                    continue  # a stop cut its retries short: not done, so not committed
            if not (self._handed_over and partition in self._handed_over):
                self._done[partition] = message.offset + 1
            if paused and partition in paused and len(queue) <= self._queue_limit // 10:
                paused.discard(partition)
                assert self.consumer is not None  # noqa: S101  # handling, so subscribed
                self.consumer.resume([partition])
            self._since_commit += 1
            if self._since_commit == COMMIT_EVERY:  # once: settle() starts the count again
                self._commit_wanted.set()
                # Handlers that never await would keep the committer (and the fetcher) waiting.
                await anyio.lowlevel.checkpoint()
            if len(self._deliveries) >= MAX_UNACKED:
                await self._wait_for_acknowledgements()
            handled += 1
            if handled >= TURN and self._scheduled:
                return  # other partitions are waiting: back in the queue for a worker
        self._commit_wanted.set()  # the queue ran dry: commit what is done

    def _release(self, partition: TopicPartition) -> None:
        self._busy.discard(partition)
        self._released.set()
        self._released = anyio.Event()
        if self._queues.get(partition):
            self._schedule(partition)

    async def _wait_for_acknowledgements(self) -> None:
        acked = self._acked
        self._commit_wanted.set()
        await acked.wait()

    # --- the committer --------------------------------------------------------------------

    async def _commit_when_due(self) -> None:
        while True:
            with anyio.move_on_after(COMMIT_INTERVAL):  # at least this often, when busy
                await self._commit_wanted.wait()
            self._commit_wanted = anyio.Event()
            if self._closing:
                return
            if not self._done and not self._deliveries:
                continue
            try:
                await self.settle()
            except Exception as error:  # noqa: BLE001  # the transport failed: stop, named
                self._fail(error)
                return
            with anyio.move_on_after(COMMIT_SPACING):
                await self._stopped.wait()  # a stop goes straight on to the last commit

    async def _recover(self, message: Message, failure: BaseException) -> bool:
        """After a failed first attempt: retry, dead-letter or report; whether it is done.

        A message whose retries a stop interrupted is not done: it is read again. Raises
        DeliveryError, with the message's coordinates, when even the dead-letter topic cannot
        take it, or when the handler raised SystemExit or KeyboardInterrupt.
        """
        try:
            await self._handle_failure(message, failure)
        except _Interrupted:
            return False
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
        return True

    async def _handle_failure(self, message: Message, failure: BaseException) -> None:
        if isinstance(failure, anyio.get_cancelled_exc_class()):
            if not is_stray_cancellation(failure):
                raise failure  # a real cancellation: a stop, the graceful timeout
            # The handler awaited something another task cancelled: that is its failure.
            failure = HandlerCancelledError()
        if not isinstance(failure, Exception):
            raise failure  # SystemExit, KeyboardInterrupt: they stop the app
        if isinstance(failure, InvalidBodyError):
            if self._report_error is not None:
                self._report_error(failure.__cause__ or failure)
            else:
                await self._give_up(message, failure)
        elif isinstance(failure, EncodingError):
            # not retried: another attempt would re-run the handler's side effects and fail alike
            if self._report_error is not None:
                self._report_error(failure)
            else:
                await self._give_up(message, failure)
        else:
            await self._failed(message, failure)

    async def _failed(self, message: Message, error: Exception) -> None:
        if self._report_error is not None:
            self._report_error(error)
        elif self._retry is not None and self._retry.attempts > 1:
            await self._retry_from(message, error)
        else:
            await self._give_up(message, error)

    async def settle(self, partitions: Collection[TopicPartition] | None = None) -> None:
        """Wait for the acknowledgement of everything sent so far, then commit what is done.

        With ``partitions``, only their offsets are committed (they are being revoked). A
        message whose result the broker refused is dead-lettered first.
        """
        async with self._settling:
            if partitions is None:
                self._since_commit = 0
                done, self._done = self._done, {}
            else:
                done = {p: self._done.pop(p) for p in partitions if p in self._done}
            deliveries, self._deliveries = self._deliveries, []
            try:
                await self._acknowledge(deliveries)
            finally:
                self._acked.set()
                self._acked = anyio.Event()
            if done and self.consumer is not None:
                again = await self.consumer.commit(done)
                for partition, offset in again.items():  # held back by a rebalance: later
                    if partition not in self._handed_over:
                        self._done[partition] = max(self._done.get(partition, 0), offset)

    async def _acknowledge(self, deliveries: list[_Sent]) -> None:
        """Await each acknowledgement; dead-letter the messages whose results were refused."""
        refused: dict[int, tuple[Message, SendRejectedError]] = {}
        answers: dict[int, SendRejectedError | None] = {}  # a batch is the Delivery of many
        for delivery, message, dead_letter in deliveries:
            key = id(delivery)
            if key not in answers:
                answers[key] = await _refusal_of(delivery)
            answer = answers[key]
            if answer is None:
                continue
            if dead_letter is not None:  # its "sent to" line is logged already
                await self._dead_letter_again(message, dead_letter, answer, logged=True)
            else:
                refused.setdefault(id(message), (message, answer))
        for message, error in refused.values():
            if self._report_error is not None:
                self._report_error(error)
                continue
            try:
                dead = await self._send_dead_letter(message, error)
                if dead is not None:
                    await dead
            except SendRejectedError as refusal:
                await self._dead_letter_again(message, error, refusal, logged=False)

    def _dead_letter_refused(self, message: Message, error: SendRejectedError) -> None:
        """Never a crash loop on one message: it is dropped, and the log line says so."""
        logger.error(
            "handler %s: %s dropped: its dead letter was refused: %s",
            self.name,
            message.coordinates,
            describe(error),
            extra=log_fields(self.name, message),
        )

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
                self.add_delivery(delivery, message)

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
            await self._give_up(message, error)

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
        self._observer.retried(message.topic)
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

    async def _give_up(self, message: Message, error: Exception) -> None:
        """Dead-letter the message (or drop it, with dead_letter=None), logged; not awaited."""
        try:
            delivery = await self._send_dead_letter(message, error)
        except SendRejectedError as refusal:  # refused at once, as too large: never a crash loop
            await self._dead_letter_again(message, error, refusal, logged=False)
            return
        if delivery is not None:
            self._deliveries.append((delivery, message, error))

    async def _dead_letter_again(
        self, message: Message, error: Exception, refusal: SendRejectedError, *, logged: bool
    ) -> None:
        """A dead letter refused: once more with x-error cut short, else dropped, logged.

        The input fitted; the headers we add are what can push its dead letter over the
        broker's size limit, and x-error is the one that can be long. ``logged``: the failure's
        ERROR line was written with the first try (refused when acknowledged, not when sent),
        and is not written twice.
        """
        logger.warning(
            "handler %s: %s: its dead letter was refused (%s); sending it again with x-error"
            " cut to %d bytes",
            self.name,
            message.coordinates,
            describe(refusal),
            COMPACT_ERROR_HEADER,
            extra=log_fields(self.name, message),
        )
        try:
            delivery = await self._send_dead_letter(message, error, compact=True, log=not logged)
            if delivery is not None:
                await delivery
        except SendRejectedError as again:
            self._dead_letter_refused(message, again)

    async def _send_dead_letter(
        self, message: Message, error: Exception, *, compact: bool = False, log: bool = True
    ) -> Delivery | None:
        attempts = message.attempt
        reason = _reason(error)
        topic = self._dead_letter_topic(message)
        if not compact:  # a second try is no second failure
            self._observer.gave_up(message.topic, topic)
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
            return None
        error_bytes = COMPACT_ERROR_HEADER if compact else MAX_ERROR_HEADER
        ours = _dead_letter_headers(message, error, attempts, error_bytes)
        headers = [(name, data) for name, data in message.header_list if name not in ours]
        headers.extend(ours.items())
        delivery = await self._broker.send(topic, message.value, key=message.key, headers=headers)
        if log:
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
        return delivery

    def _dead_letter_topic(self, message: Message) -> str | None:
        if self._dead_letter is None:
            return None
        return self._dead_letter.replace("{topic}", message.topic)


def _reason(error: Exception) -> str:
    """What went wrong with a message, as its log line says it."""
    if isinstance(error, InvalidBodyError):
        return f"has an invalid body: {error.reason}"
    return f"failed: {describe(error)}"


async def _refusal_of(delivery: Delivery) -> SendRejectedError | None:
    """Await the acknowledgement: None, or the broker's refusal of the message."""
    try:
        await delivery
    except SendRejectedError as refusal:
        return refusal
    return None


def _time_limited(call: HandlerCall, seconds: float, name: str) -> HandlerCall:
    """``call``, cancelled after ``seconds``: that attempt then fails with HandlerTimeoutError."""

    async def limited(message: Message) -> Any:
        with anyio.move_on_after(seconds):
            return await call(message)
        raise HandlerTimeoutError(name, seconds)  # the block was cancelled at its deadline

    return limited


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


def _dead_letter_headers(
    message: Message, error: Exception, attempts: int, error_bytes: int = MAX_ERROR_HEADER
) -> dict[str, bytes]:
    cause = error.__cause__ if isinstance(error, InvalidBodyError) and error.__cause__ else error
    text = error.reason if isinstance(error, InvalidBodyError) else str(error)
    return {
        DEAD_LETTER_HEADERS["error_type"]: type(cause).__name__.encode(),
        DEAD_LETTER_HEADERS["error"]: _truncated(text, error_bytes),
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


class Subscribers:
    """The subscriber loops of one run, in a task group the run holds from startup to shutdown.

    A loop that crashes (its transport failed) is recorded and ``on_crash`` asks the run to
    stop: the other loops finish their message in hand and commit, as on any graceful stop.
    """

    def __init__(
        self, shields: StopShields, on_crash: Callable[[], None], metrics: Metrics = NO_METRICS
    ) -> None:
        self._shields = shields
        self._on_crash = on_crash
        self._metrics = metrics
        self._loops: list[SubscriberLoop] = []
        self._scopes: list[anyio.CancelScope] = []
        self.crashes: list[ShutdownStepError] = []

    async def start(
        self,
        tasks: TaskGroup,
        broker: Broker,
        handlers: Sequence[BoundHandler],
        *,
        limit: float,
        report_error: ErrorReport | None = None,
        graceful_timeout: float = 30.0,
    ) -> None:
        """Subscribe each handler and start its loop, held back until ``deliver()``.

        Each subscription gets ``limit`` seconds; a failure raises StartupError naming it.
        With ``report_error``, a handler's failure is handed to it instead of being retried
        and dead-lettered (the test client raises it in the test).
        """
        loops = [
            SubscriberLoop(
                handler,
                broker,
                self._shields,
                report_error,
                graceful_timeout,
                observer=self._metrics.subscriber(handler.spec.name),
            )
            for handler in handlers
        ]
        failures: list[StartupError] = []
        # Concurrently: on Kafka each group's first join takes a second or more.
        async with anyio.create_task_group() as joining:
            for loop in loops:
                joining.start_soon(self._subscribe, broker, loop, limit, failures)
        if failures:
            with self._shields.shield():
                for loop in loops:
                    if loop.consumer is not None:
                        await loop.consumer.close()
            raise failures[0]
        for loop in loops:
            self._loops.append(loop)
            tasks.start_soon(self._run, loop, name=f"subscriber {loop.name}")

    @staticmethod
    async def _subscribe(
        broker: Broker, loop: SubscriberLoop, limit: float, failures: list[StartupError]
    ) -> None:
        """Subscribe one handler within ``limit``; record a failure instead of raising it."""
        spec = loop.spec
        what = f"subscriber {spec.name} ({', '.join(spec.topics)})"
        try:
            with TimeLimit(limit) as time_limit:
                subscription = Subscription(spec.topics, spec.group, spec.name)
                # kept also when it came late: start() closes it
                loop.consumer = await broker.subscribe(subscription, loop)
        except Exception as error:  # noqa: BLE001  # recorded; start() raises the first
            failure = StartupError(what, describe(error))
            failure.__cause__ = error
            failures.append(failure)
            return
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

    async def partitions(self) -> dict[str, list[PartitionStatus]]:
        """Per running subscriber, the partitions its consumer owns, with offsets and lag."""
        statuses: dict[str, list[PartitionStatus]] = {}
        for loop in self._loops:
            if loop.consumer is not None and not loop.finished.is_set():
                statuses[loop.name] = await loop.consumer.status()
        return statuses

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
