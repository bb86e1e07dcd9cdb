"""Probes and metrics over HTTP: ``/live``, ``/ready`` and ``/metrics`` on the health port.

A small HTTP/1.0 responder on anyio: GET only, one request per connection (``Connection:
close``), the request head bounded in size and time. It runs in a task of the lifespan's own
task group, from the start of startup to the end of shutdown, so ``/live`` answers all along
while ``/ready`` says when the app can take work:

- 200 once startup completed and delivery began;
- 503 before that, once shutdown began, and while the broker does not answer (a transport
  with a ``reachable()`` method is asked, at most once a second, within ``REACHABLE_TIMEOUT``).

A probe never fails the app: a malformed request gets a 400 and a broken connection is closed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup, TaskStatus
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ._broker import PartitionStatus
from ._metrics import AppMetrics
from ._report import StartupReport

__all__ = ["DEFAULT_HEALTH_HOST", "HealthServer", "Probes", "Reachable"]

logger = logging.getLogger("di_lifespan")

# Probes come from the kubelet on the pod's address, and Prometheus from another pod.
DEFAULT_HEALTH_HOST = "0.0.0.0"  # noqa: S104  # see above
MAX_REQUEST_HEAD = 8192  # bytes of request line and headers
REQUEST_TIMEOUT = 5.0  # seconds to read a request and write its answer
REACHABLE_TIMEOUT = 2.0  # seconds the broker gets to answer a readiness check
REACHABLE_FOR = 1.0  # seconds a broker's answer is reused by later probes
PARTITIONS_TIMEOUT = 5.0  # seconds a scrape waits for the consumers' offsets (lag)
MAX_CONNECTIONS = 32  # handled at once; more wait in the listen backlog

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@runtime_checkable
class Reachable(Protocol):
    """A transport that can say whether its broker answers now (the Kafka transport can)."""

    async def reachable(self) -> bool:
        """Whether the broker answers a request now."""


@dataclass(slots=True)
class Probes:
    """What the health server reads from the run it serves."""

    running: Callable[[], bool]  # startup done, delivery begun, shutdown not begun
    broker: object
    metrics: AppMetrics
    partitions: Callable[[], Awaitable[Mapping[str, Sequence[PartitionStatus]]]]
    report: Callable[[], StartupReport | None]


class _BrokerCheck:
    """Asks the broker whether it answers; shares one answer between probes for a second."""

    def __init__(self, broker: object) -> None:
        self._broker = broker if isinstance(broker, Reachable) else None
        self._lock = anyio.Lock()
        self._checked_at = -math.inf
        self._answer = True

    async def reachable(self) -> bool:
        broker = self._broker
        if broker is None:
            return True  # in-process (memory://): always there
        async with self._lock:
            if anyio.current_time() - self._checked_at >= REACHABLE_FOR:
                answer = False
                with anyio.move_on_after(REACHABLE_TIMEOUT):
                    answer = await broker.reachable()
                if answer != self._answer:
                    log = logger.info if answer else logger.warning
                    log("health: the broker is %s", "reachable again" if answer else "unreachable")
                self._answer = answer
                self._checked_at = anyio.current_time()
            return self._answer


class HealthServer:
    """Serves the probes and metrics of one run on ``host``:``port`` (0: a free port)."""

    def __init__(self, host: str, port: int, probes: Probes) -> None:
        self._host = host
        self._port = port
        self._probes = probes
        self._broker = _BrokerCheck(probes.broker)
        self._scope = anyio.CancelScope()
        self._slots = anyio.Semaphore(MAX_CONNECTIONS)
        self.address: tuple[str, int] | None = None

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen (``task_status`` is told once bound), answer requests until ``close()``."""
        with self._scope:
            listener = await anyio.create_tcp_listener(local_host=self._host, local_port=self._port)
            async with listener, anyio.create_task_group() as connections:
                # create_tcp_listener makes socket listeners; the filter tells mypy so
                sockets = [s for s in listener.listeners if isinstance(s, SocketListener)]
                self.address = address = _address(sockets[0])
                logger.info("health: /live, /ready and /metrics on http://%s:%d", *address)
                for socket in sockets:
                    connections.start_soon(self._accept, socket, connections)
                task_status.started()
        self.address = None

    def close(self) -> None:
        """Stop listening and drop the connections being answered."""
        self._scope.cancel()

    async def _accept(self, socket: SocketListener, connections: TaskGroup) -> None:
        while True:
            await self._slots.acquire()
            try:
                stream = await socket.accept()
            except OSError as error:  # out of file descriptors, say: the app goes on
                self._slots.release()
                logger.warning("health: accepting a connection failed: %s", error)
                await anyio.sleep(0.1)
                continue
            connections.start_soon(self._answer, stream)

    async def _answer(self, stream: SocketStream) -> None:
        try:
            async with stream:
                with anyio.move_on_after(REQUEST_TIMEOUT):
                    head = await _read_head(stream)
                    if head is not None:
                        await stream.send(await self._respond(head))
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
            pass  # the client went away: nothing to answer
        except Exception:
            logger.exception("health: answering a request failed")
        finally:
            self._slots.release()

    async def _respond(self, head: bytes) -> bytes:
        if len(head) > MAX_REQUEST_HEAD:
            return _response(431, b"request head too large\n")
        parts = head.split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):  # noqa: PLR2004  # method, target, version
            return _response(400, b"bad request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        routes = {b"/live": self._live, b"/ready": self._ready, b"/metrics": self._metrics}
        route = routes.get(target)
        if route is None:
            return _response(404, b"not found: try /live, /ready or /metrics\n")
        if method != b"GET":
            return _response(405, b"only GET\n", extra=((b"Allow", b"GET"),))
        return await route()

    async def _live(self) -> bytes:
        return _response(200, b"live\n")

    async def _ready(self) -> bytes:
        reason = await self._not_ready()
        if reason is None:
            return _response(200, b"ready\n")
        return _response(503, f"not ready: {reason}\n".encode())

    async def _not_ready(self) -> str | None:
        """Why the app cannot take work now, or None when it can."""
        if not self._probes.running():
            return "not serving (starting, or stopping)"
        if not await self._broker.reachable():
            return "the broker is unreachable"
        return None

    async def _metrics(self) -> bytes:
        probes = self._probes
        return _response(
            200, await self._exposition(probes), content_type=CONTENT_TYPE_LATEST.encode()
        )

    async def _exposition(self, probes: Probes) -> bytes:
        partitions: Mapping[str, Sequence[PartitionStatus]] = {}
        if probes.running():
            try:
                with anyio.move_on_after(PARTITIONS_TIMEOUT) as scope:
                    partitions = await probes.partitions()
            except Exception as error:  # noqa: BLE001  # the other metrics are served without lag
                logger.warning("health: reading the consumers' lag failed: %s", error)
            if scope.cancelled_caught:
                logger.warning(
                    "health: reading the consumers' lag took over %gs", PARTITIONS_TIMEOUT
                )
        return probes.metrics.render(partitions, probes.report())


def _address(socket: SocketListener) -> tuple[str, int]:
    address = socket.extra(SocketAttribute.local_address)  # noqa: S610  # anyio's, not Django's
    if not isinstance(address, tuple):
        raise TypeError(f"a TCP listener has a (host, port) address, not {address!r}")
    return str(address[0]), int(address[1])


async def _read_head(stream: SocketStream) -> bytes | None:
    """The request line and headers (cut after MAX_REQUEST_HEAD + 1 bytes); None if none came."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        if len(head) > MAX_REQUEST_HEAD:
            return head
        try:
            head += await stream.receive(MAX_REQUEST_HEAD + 1 - len(head) or 1)
        except anyio.EndOfStream:
            return head or None
    return head.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in head else head.split(b"\n\n", 1)[0]


def _response(
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    headers = [
        (b"Content-Type", content_type),
        (b"Content-Length", str(len(body)).encode()),
        (b"Connection", b"close"),
        *extra,
    ]
    lines = [f"HTTP/1.0 {status} {_REASONS[status]}".encode()]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
