"""The demo ``make demo`` runs: the iris service driven through the ``di-lifespan`` command.

It does what a user would do in four terminals, and shows each command:

1. ``di-lifespan broker``: a local Kafka-protocol broker (memory only; no Docker, no JVM);
2. ``di-lifespan run examples.iris.app:app``: the service; its startup report shows the model
   fitted while the prediction log opens;
3. ``di-lifespan consume predictions input_data.dlq``: what comes out, as it comes;
4. ``di-lifespan publish input_data ...``: three flowers, then one invalid measurement;

then it stops the service with SIGTERM (in-flight work finishes, offsets are committed, the
resources are finalized in reverse order) and the broker. Exit status 0 when every flower got
its prediction, the invalid one its dead letter, and the service stopped cleanly.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from queue import Empty, Queue
from typing import IO, Any

FLOWERS = [
    {"sepal_length": 5.0, "sepal_width": 3.4, "petal_length": 1.5, "petal_width": 0.2},
    {"sepal_length": 6.1, "sepal_width": 2.8, "petal_length": 4.7, "petal_width": 1.2},
    {"sepal_length": 6.7, "sepal_width": 3.1, "petal_length": 5.6, "petal_width": 2.4},
]
INVALID = {"sepal_length": -1.0, "sepal_width": 3.0, "petal_length": 1.0, "petal_width": 0.2}
STARTUP_SECONDS = 120.0  # a cold machine imports scikit-learn slowly
OUTPUT_SECONDS = 60.0


def command(*arguments: str) -> list[str]:
    """The command line of ``di-lifespan arguments``, shown first as a user would type it."""
    print(f"$ di-lifespan {shlex.join(arguments)}", flush=True)
    return [sys.executable, "-m", "di_lifespan.cli", *arguments]


def start(arguments: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603  # our own command lines
        arguments,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # signals from this demo only, never a terminal's
    )


def follow(stream: IO[str], show: Callable[[str], None]) -> Queue[str | None]:
    """Show each line of ``stream`` as it comes; the lines are also queued (None at the end)."""
    lines: Queue[str | None] = Queue()

    def read() -> None:
        for line in stream:
            show(line.rstrip("\n"))
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for_line(lines: Queue[str | None], wanted: str, seconds: float) -> str:
    """The first line that starts with ``wanted``; RuntimeError if the process ends first."""
    while True:
        try:
            line = lines.get(timeout=seconds)
        except Empty:
            raise RuntimeError(f"no {wanted!r} line within {seconds:g} s") from None
        if line is None:
            raise RuntimeError(f"the process ended before printing {wanted!r}")
        if line.startswith(wanted):
            return line


def describe(line: str) -> str:
    """One consumed message (a JSON line of ``di-lifespan consume``), in a few words."""
    try:
        message: dict[str, Any] = json.loads(line)
    except json.JSONDecodeError:
        return line
    if message.get("topic") == "predictions":
        return f"  prediction: {message['value']['species']}"
    error = message.get("headers", {}).get("x-error", "?")
    return f"  dead letter: {error}"


@contextmanager
def stopped_at_exit(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Whatever happens, the process does not outlive the demo."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> int:
    with stopped_at_exit(start(command("broker"))) as broker:
        assert broker.stdout is not None  # noqa: S101  # started with a pipe
        url = broker.stdout.readline().strip()
        print(f"  {url}")
        env = {**os.environ, "DI_LIFESPAN_BROKER": url}  # every command below uses it
        service_command = command("run", "examples.iris.app:app")
        with stopped_at_exit(start(service_command, env)) as service:
            assert service.stdout is not None  # noqa: S101  # started with a pipe
            service_lines = follow(service.stdout, lambda line: print(f"  service | {line}"))
            wait_for_line(service_lines, "ready", STARTUP_SECONDS)
            expected = len(FLOWERS) + 1
            consumer = start(
                command(
                    "consume",
                    "predictions",
                    "input_data.dlq",
                    "--from-beginning",
                    f"--count={expected}",
                    f"--timeout={OUTPUT_SECONDS:g}",
                ),
                env,
            )
            with stopped_at_exit(consumer):
                assert consumer.stdout is not None  # noqa: S101  # started with a pipe
                consumed = follow(consumer.stdout, lambda line: print(describe(line)))
                bodies = [json.dumps(flower) for flower in FLOWERS]
                for batch in (bodies, [json.dumps(INVALID)]):
                    publish = command("publish", "input_data", *batch)
                    subprocess.run(publish, env=env, check=True)  # noqa: S603  # ours
                outputs = [line for line in iter(consumed.get, None) if line.startswith("{")]
            print("$ kill -TERM <service>  # a graceful stop", flush=True)
            service.send_signal(signal.SIGTERM)
            service_status = service.wait(timeout=60)
            for _ in iter(service_lines.get, None):
                pass  # the rest of its output is shown as it comes
    if len(outputs) != expected or service_status != 0:
        print(f"demo failed: {len(outputs)} of {expected} outputs, service exit {service_status}")
        return 1
    print("demo done: every flower predicted, the invalid one dead-lettered, stopped in order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
