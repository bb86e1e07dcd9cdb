"""EmbeddedKafka: a port another process holds is an error, never mistaken for our broker."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import di_lifespan
from di_lifespan import EmbeddedKafkaError
from di_lifespan.kafka import EmbeddedKafka
from tests.confluent import AdminClient

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def other_broker() -> Iterator[int]:
    """A port held by something else that answers Kafka's ApiVersions as a broker would."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(1)
                try:
                    (size,) = struct.unpack(">i", connection.recv(4))
                    connection.recv(size)
                    connection.sendall(struct.pack(">ii", 4, 1))  # size, correlation id 1
                except (OSError, struct.error):
                    continue

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_a_port_held_by_another_broker_is_refused(other_broker: int) -> None:
    """Another broker answering on the port is not taken for ours: EmbeddedKafkaError."""
    kafka = EmbeddedKafka(port=other_broker, startup_timeout=5)
    with pytest.raises(EmbeddedKafkaError) as caught:
        kafka.start()
    assert caught.value.address == f"127.0.0.1:{other_broker}"
    assert f"port {other_broker} is already in use by another process" in str(caught.value)
    assert not kafka.running


def test_a_port_held_by_a_silent_listener_is_refused() -> None:
    """A port something listens on without answering is refused before any launch."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = int(listener.getsockname()[1])
        with pytest.raises(EmbeddedKafkaError, match="already in use"):
            EmbeddedKafka(port=port).start()


def test_the_error_is_part_of_the_public_hierarchy() -> None:
    """EmbeddedKafkaError is importable from di_lifespan and di_lifespan.kafka, one class."""
    assert di_lifespan.kafka.EmbeddedKafkaError is di_lifespan.EmbeddedKafkaError
    assert issubclass(EmbeddedKafkaError, di_lifespan.DiLifespanError)


def test_the_advertised_address_is_what_the_metadata_names() -> None:
    """advertised_address is the broker address clients are told, not the listener's."""
    with EmbeddedKafka(advertised_address="127.0.0.1:1") as kafka:
        settings = {"bootstrap.servers": kafka.bootstrap_servers, "log_level": 3}
        admin = AdminClient(settings)
        brokers = admin.list_topics(timeout=10).brokers
    assert [(broker.host, broker.port) for broker in brokers.values()] == [("127.0.0.1", 1)]


@pytest.mark.parametrize("address", ["127.0.0.1", "host:0", ":9092", 9092])
def test_an_advertised_address_without_a_port_is_refused(address: object) -> None:
    """An advertised_address that is not host:port is a ConfigurationError at once."""
    with pytest.raises(di_lifespan.ConfigurationError, match="expected host:port"):
        EmbeddedKafka(advertised_address=address)  # type: ignore[arg-type]  # on purpose


@pytest.mark.timeout(90)
def test_ctrl_c_in_a_terminal_stops_an_embedded_app_gracefully() -> None:
    """SIGINT to the whole process group (a terminal's Ctrl+C) stops the app cleanly, exit 0."""
    service = subprocess.Popen(
        [sys.executable, "-m", "tests.apps.embedded_service"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, as a shell gives a foreground job
    )
    try:
        assert service.stdout is not None
        assert service.stdout.readline().strip() == "ready", service.stderr
        os.killpg(service.pid, signal.SIGINT)
        _, stderr = service.communicate(timeout=60)
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait()
    assert service.returncode == 0, stderr
    assert "ERROR" not in stderr, stderr
