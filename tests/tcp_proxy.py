"""A TCP proxy in front of a Kafka broker whose connections a test can cut and restore.

Each connection's first request is read to learn the client's ``client.id``: connections of a
client named in ``spared`` (the test's own producer and reader) are never cut, so a test can
go on feeding and reading the broker while the service under test has lost it. The broker
must advertise the proxy's address (``EmbeddedKafka(advertised_address=...)``): clients
connect to the advertised address after bootstrapping, so that is the one address every
client (the spared ones too) reaches the broker by.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Collection

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Listener, SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

logger = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")
_HEADER = struct.Struct(">hhih")  # api key, api version, correlation id, client id length


class KafkaProxy:
    """Listens on ``127.0.0.1:port`` and forwards to ``upstream`` (``host:port``).

    ``cut()`` closes every connection of the clients not spared and closes each new one of
    theirs as soon as it sends its first request, until ``restore()``.
    """

    def __init__(self, upstream: str, *, spared: Collection[str] = ()) -> None:
        self.upstream = upstream  # settable until the first connection
        self._spared = frozenset(spared)
        self._cut = False
        self._live: set[anyio.CancelScope] = set()
        self.port = 0
        self.refused = 0  # connections closed at once while cut
        self.severed = 0  # live connections closed by cut()

    @property
    def address(self) -> str:
        """``127.0.0.1:port``: what the broker should advertise."""
        return f"127.0.0.1:{self.port}"

    async def serve(self, tasks: TaskGroup) -> None:
        """Listen in ``tasks`` until they are cancelled; ``port`` is set on return."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        # anyio typed attribute, not Django: S610 misreads the name
        self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))  # noqa: S610
        tasks.start_soon(self._listen, listener, tasks)

    async def _listen(self, listener: Listener[SocketStream], tasks: TaskGroup) -> None:
        async with listener:
            await listener.serve(self._handle, tasks)

    def cut(self) -> None:
        """Close every connection not spared; refuse such connections until restore()."""
        self._cut = True
        self.severed += len(self._live)
        for scope in self._live:
            scope.cancel()

    def restore(self) -> None:
        """Let every client connect again."""
        self._cut = False

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            reader = BufferedByteReceiveStream(client)
            try:
                (size,) = _SIZE.unpack(await reader.receive_exactly(_SIZE.size))
                request = await reader.receive_exactly(size)
            except (anyio.EndOfStream, anyio.IncompleteRead, OSError):
                return
            spared = _client_id(request) in self._spared
            if self._cut and not spared:
                self.refused += 1
                return
            try:
                host, _, port = self.upstream.rpartition(":")
                upstream = await anyio.connect_tcp(host, int(port))
            except OSError:
                return
            async with upstream:
                await upstream.send(_SIZE.pack(size) + request)
                with anyio.CancelScope() as scope:
                    if not spared:
                        self._live.add(scope)
                    try:
                        async with anyio.create_task_group() as pipes:
                            pipes.start_soon(_pipe, reader, upstream, scope)
                            pipes.start_soon(_pipe, upstream, client, scope)
                    finally:
                        self._live.discard(scope)


async def _pipe(source: ByteReceiveStream, sink: ByteSendStream, both: anyio.CancelScope) -> None:
    """Copy until either side closes; then end the other direction too."""
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        both.cancel()


def _client_id(request: bytes) -> str | None:
    """The client.id in a Kafka request header (a nullable string in every header version)."""
    if len(request) < _HEADER.size:
        return None
    length = _HEADER.unpack_from(request)[3]
    if length < 0:
        return None
    start = _HEADER.size
    return request[start : start + length].decode(errors="replace")
