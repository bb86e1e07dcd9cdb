"""app.run(): SIGTERM or SIGINT stops gracefully, a second SIGINT exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def start(mode: str, *options: str) -> subprocess.Popen[str]:
    """Start tests/apps/signalled.py in the given mode."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.apps.signalled", mode, *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_until(process: subprocess.Popen[str], line: str) -> None:
    """Read the child's stdout until ``line``; fail if the child exits first."""
    assert process.stdout is not None
    for received in process.stdout:
        if received.strip() == line:
            return
    errors = process.stderr.read() if process.stderr else ""
    pytest.fail(f"the app exited before printing {line!r}: {errors}")


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_app_gracefully(signal_number: int) -> None:
    """SIGTERM or SIGINT runs the whole shutdown, finalizers included, and exits with 0."""
    process = start("ok")
    read_until(process, "ready")
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert stdout.splitlines() == ["finalizer started", "finalizer done"]
    assert "stopping gracefully" in stderr


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_lets_the_message_in_hand_finish(signal_number: int) -> None:
    """A handler busy when the signal comes finishes before the app stops; exit status 0."""
    process = start("busy")
    read_until(process, "handler started")
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert stdout.splitlines() == ["handler done", "finalizer started", "finalizer done"]


def test_a_signal_during_startup_exits_with_1_saying_so() -> None:
    """SIGTERM before the app is ready stops the start: a warning, no error report, status 1."""
    process = start("slow-start")
    read_until(process, "starting")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1, stderr
    assert "stopped by a signal before startup finished" in stderr
    assert " ERROR " not in stderr


def test_a_failed_finalizer_after_a_signal_exits_with_1() -> None:
    """A stop by SIGTERM whose shutdown fails exits with status 1, the failure logged."""
    process = start("bad-finalizer")
    read_until(process, "ready")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1, stderr
    assert "finalizer of Pool failed: RuntimeError: pool did not close cleanly" in stderr


def test_a_second_interrupt_exits_at_once() -> None:
    """While a finalizer hangs, a second SIGINT cuts the shutdown short: exit status 130."""
    process = start("hang")
    read_until(process, "ready")
    process.send_signal(signal.SIGINT)
    read_until(process, "finalizer started")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "second interrupt" in stderr
    assert "finalizer of Pool failed: was cancelled by a forced stop" in stderr


def test_a_failed_start_prints_one_line_and_exits_with_1() -> None:
    """A broken resource stops app.run() with an error line naming it, exit status 1."""
    process = start("broken")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "resource Pool failed to start: ConnectionRefusedError: db:5432" in stderr
    assert "Traceback" not in stderr


def test_a_crashed_subscriber_stops_the_app_with_one_line_and_exit_1() -> None:
    """A subscriber whose transport fails stops app.run(): one error line, no traceback, 1."""
    process = start("crash")
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 1, stderr
    assert "finalizer done" in stdout  # the shutdown ran
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert errors[-1].endswith(
        "subscriber main.<locals>.work stopped at jobs[0]@0:"
        " ConnectionError: broker refused a message to jobs.dlq"
    ), stderr
    assert "Traceback" not in stderr


def test_debug_logging_shows_the_traceback_of_a_failure() -> None:
    """With DEBUG logging, a failed start also logs its traceback."""
    process = start("broken", "--debug")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "Traceback" in stderr
    assert "ConnectionRefusedError: db:5432" in stderr
