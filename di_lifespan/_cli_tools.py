"""``publish``, ``consume`` and ``broker``: a running service's topics, from the command line.

They use the app's own transports (a ``kafka://`` URL, with its options); ``memory://`` and
``embedded://`` live inside one process, so they are refused with what to use instead.
"""

from __future__ import annotations

import base64
import json
import signal
import sys
import uuid
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import IO, Any
from urllib.parse import urlsplit

import anyio

from ._broker import Broker, Subscription
from ._broker import TopicPartition as Partition
from ._cli_output import CliError
from ._cli_target import USAGE, make_broker
from ._delivery import Publisher
from ._embedded import EmbeddedKafka
from ._errors import describe
from ._kafka import EMBEDDED_SESSION_TIMEOUT_MS
from ._message import Message

__all__ = ["consume", "message_line", "publish", "serve_broker", "tool_broker"]

_FETCH = 100


def tool_broker(url: str) -> Broker:
    """The broker a command talks to: a kafka:// URL (memory:// and embedded:// are refused)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        raise CliError(
            f"--broker {url!r}: a memory:// broker lives inside one process, so another command"
            " cannot reach it; run the app on kafka://host:port or embedded:// and give that",
            USAGE,
        )
    if scheme == "embedded":
        raise CliError(
            f"--broker {url!r}: embedded:// would start a broker of its own inside this command"
            " and drop it at exit; give the kafka:// address of the running one (what"
            " `di-lifespan run` or `di-lifespan broker` prints)",
            USAGE,
        )
    return make_broker(url)


def parse_values(values: Sequence[str]) -> list[Any]:
    """Each argument as JSON (``-`` reads one JSON value per line of stdin)."""
    parsed: list[Any] = []
    for number, text in enumerate(values, start=1):
        lines = sys.stdin.read().splitlines() if text == "-" else [text]
        for line in lines:
            if text == "-" and not line.strip():
                continue
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise CliError(
                    f"message {number} is not JSON ({error.msg} at column {error.colno}): {line!r}"
                    " (quote a string as '\"text\"')",
                    USAGE,
                ) from None
    return parsed


def parse_headers(headers: Sequence[str]) -> list[tuple[str, str]]:
    """``name=value`` arguments as header pairs, in order."""
    pairs = []
    for header in headers:
        name, equals, value = header.partition("=")
        if not equals or not name:
            raise CliError(f"--header {header!r}: expected name=value", USAGE)
        pairs.append((name, value))
    return pairs


async def publish(
    broker: Broker,
    topic: str,
    values: Sequence[Any],
    *,
    key: str | None,
    headers: Sequence[tuple[str, str]],
) -> None:
    """Send each value (as JSON) and wait for the broker's acknowledgements."""
    await _connect(broker)
    try:
        publisher = Publisher(broker)
        for value in values:
            await publisher.publish(topic, value, key=key, headers=list(headers) or None)
    finally:
        with anyio.CancelScope(shield=True):
            await broker.stop()


async def _connect(broker: Broker) -> None:
    """Start the broker client; a broker that stays unreachable is one CliError line."""
    try:
        await broker.start()
    except Exception as error:
        raise CliError(f"cannot reach the broker {broker.url}: {describe(error)}") from error


class _Assignment:
    """A consumer that reads every partition it is given and commits only with a group."""

    def assigned(self, partitions: Collection[Partition]) -> None:
        """Nothing to prepare."""

    async def revoked(self, partitions: Collection[Partition]) -> None:
        """Nothing held: every printed message was committed already."""


async def consume(
    broker: Broker,
    topics: Sequence[str],
    *,
    from_beginning: bool,
    group: str | None,
    count: int | None,
    within: float | None,
    write: Callable[[str], None],
) -> int:
    """Print each message as a JSON line until ``count`` came, ``within`` s passed or a signal.

    Returns how many messages were printed.
    """
    commits = group is not None
    if group is None and from_beginning:
        group = f"di-lifespan-consume-{uuid.uuid4().hex[:12]}"  # new: reads from the start
    seen = 0
    await _connect(broker)
    try:
        consumer = await broker.subscribe(
            Subscription(tuple(topics), group, name="di-lifespan consume"), _Assignment()
        )
        try:
            limit: AbstractContextManager[Any] = (
                anyio.move_on_after(within) if within is not None else nullcontext()
            )
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(_stop_on_signal, signals, consumer.stop)
                    with limit:
                        while count is None or seen < count:
                            wanted = _FETCH if count is None else min(_FETCH, count - seen)
                            messages = await consumer.fetch(wanted)
                            if not messages:
                                break  # stopped by a signal
                            for message in messages[:wanted]:
                                write(message_line(message))
                            seen += min(len(messages), wanted)
                            if commits:
                                await consumer.commit(_next_offsets(messages[:wanted]))
                    tasks.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await consumer.close()
    finally:
        with anyio.CancelScope(shield=True):
            await broker.stop()
    return seen


async def _stop_on_signal(signals: Any, stop: Callable[[], None]) -> None:
    async for _ in signals:
        stop()
        return


def _next_offsets(messages: Sequence[Message]) -> dict[Partition, int]:
    offsets: dict[Partition, int] = {}
    for message in messages:
        where = (message.topic, message.partition)
        offsets[where] = max(offsets.get(where, 0), message.offset + 1)
    return offsets


def message_line(message: Message) -> str:
    """One message as a JSON line: coordinates, key, headers, timestamp and the body.

    A JSON body is shown as its value, other UTF-8 text as a string, anything else in
    ``value_base64``.
    """
    line: dict[str, Any] = {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": None if message.key is None else message.key.decode("utf-8", errors="replace"),
        "headers": {
            name: value.decode("utf-8", errors="replace") for name, value in message.header_list
        },
        "timestamp": message.timestamp.isoformat(timespec="milliseconds"),
    }
    try:
        line["value"] = json.loads(message.value)
    except ValueError:
        try:
            line["value"] = message.value.decode("utf-8")
        except UnicodeDecodeError:
            line["value_base64"] = base64.b64encode(message.value).decode("ascii")
    return json.dumps(line, ensure_ascii=False)


def serve_broker(port: int | None, out: IO[str], say: Callable[[str], None]) -> None:
    """Run an embedded Kafka-protocol broker until SIGINT or SIGTERM; print its URL to ``out``."""
    with EmbeddedKafka(port) as kafka:
        url = (
            f"kafka://{kafka.bootstrap_servers}"
            f"?idempotent=false&session_timeout_ms={EMBEDDED_SESSION_TIMEOUT_MS}"
        )
        anyio.run(_until_signalled, url, out, say)


async def _until_signalled(url: str, out: IO[str], say: Callable[[str], None]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # Printed once a signal would stop it in order: whoever reads the URL may stop it.
        out.write(url + "\n")
        out.flush()
        say("embedded broker running (memory only; Ctrl+C to stop)")
        async for _ in signals:
            return
