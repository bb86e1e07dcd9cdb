"""``run --workers N`` and ``run --reload``: a parent process that keeps worker processes going.

Each worker is ``di-lifespan run`` of the same app in a child process, with a lifespan of its
own; workers of one app share its consumer groups, so Kafka spreads the partitions among them.
The workers run in a process group of their own, so that Ctrl+C in a terminal reaches the
parent only, which passes each SIGINT or SIGTERM on once: the first stops them gracefully, a
second SIGINT cuts their shutdown short. A worker that dies is reported (exit status or signal)
and started again after a pause that doubles with each quick death (``--reload``: at the next
change instead). A worker that exits with status 2 (a usage or configuration error) stops them
all: starting it again would fail the same way. The parent exits once every worker stopped.

With ``--reload`` the parent watches the Python files under the current directory (watchfiles)
and restarts the workers when one changes.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = ["WORKER_ENV", "Supervisor"]

logger = logging.getLogger("di_lifespan.supervisor")

WORKER_ENV = "DI_LIFESPAN_WORKER"  # the worker's number, 1 to N, in each worker's environment
FIRST_PAUSE = 0.5  # seconds before a worker that died is started again
LONGEST_PAUSE = 30.0
STEADY = 10.0  # a worker that ran this long before dying is started again after FIRST_PAUSE
RELOAD_GRACE = 30.0  # seconds a worker has to stop before a reload kills it
_TICK = 0.05  # seconds between looks at the workers
_USAGE = 2
_FORCED = 130


@dataclass(slots=True)
class _Worker:
    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    pause: float = FIRST_PAUSE
    restart_at: float | None = None
    status: int | None = None  # the exit status it stopped with, once stopped for good


def exit_status(returncode: int) -> int:
    """A child's return code as a shell's exit status (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


class Supervisor:
    """Runs ``count`` workers, each started by ``command``, until SIGINT or SIGTERM."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        *,
        environ: Mapping[str, str] | None = None,
        reload_dirs: Sequence[Path] = (),
        say: Callable[[str], None] = logger.info,
    ) -> None:
        self._command = list(command)
        self._environ = dict(os.environ if environ is None else environ)
        self._workers = [_Worker(number) for number in range(1, count + 1)]
        self._reload_dirs = list(reload_dirs)
        self._say = say
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._changes: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stopping = False
        self._status: int | None = None  # set when the parent decides its own exit status

    def run(self) -> int:
        """Start the workers and keep them going until told to stop; return the exit status."""
        previous = {
            number: signal.signal(number, self._on_signal)
            for number in (signal.SIGINT, signal.SIGTERM)
        }
        stop_watching = threading.Event()
        watcher = None
        if self._reload_dirs:
            watcher = threading.Thread(
                target=self._watch, args=(stop_watching,), name="di-lifespan reload", daemon=True
            )
            watcher.start()
        try:
            for worker in self._workers:
                self._start(worker)
            return self._loop()
        finally:
            stop_watching.set()
            for number, handler in previous.items():
                signal.signal(number, handler)
            for worker in self._workers:  # only after an error of ours: never leave one behind
                if worker.process is not None and worker.process.poll() is None:
                    worker.process.kill()
                    worker.process.wait()

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        self._signals.put(number)

    def _loop(self) -> int:
        while True:
            self._handle_signals()
            self._handle_changes()
            for worker in self._workers:
                self._look_after(worker)
            if self._stopping and all(worker.process is None for worker in self._workers):
                return self._final_status()
            time.sleep(_TICK)

    def _handle_signals(self) -> None:
        while not self._signals.empty():
            number = self._signals.get()
            name = signal.Signals(number).name
            if not self._stopping:
                self._say(f"received {name}: stopping {self._count()} (Ctrl+C again to hurry)")
                self._stop_all(number)
            elif number == signal.SIGINT:
                self._say("second interrupt: the workers cut their shutdown short")
                self._status = _FORCED
                self._stop_all(signal.SIGINT)

    def _handle_changes(self) -> None:
        changed = None
        while not self._changes.empty():
            changed = self._changes.get()
        if changed is None or self._stopping:
            return
        self._say(f"{changed} changed: restarting {self._count()}")
        for worker in self._workers:
            worker.pause = FIRST_PAUSE
            if worker.process is not None:
                _stop(worker.process)
                worker.process = None
            self._start(worker)

    def _look_after(self, worker: _Worker) -> None:
        now = time.monotonic()
        process = worker.process
        if process is None:
            if worker.restart_at is not None and now >= worker.restart_at and not self._stopping:
                self._start(worker)
            return
        returncode = process.poll()
        if returncode is None:
            return
        worker.process = None
        if self._stopping:
            worker.status = exit_status(returncode)
            return
        self._say(f"worker {worker.number} (pid {process.pid}) {describe_exit(returncode)}")
        if returncode == _USAGE:
            self._say("it cannot start as configured: stopping")
            self._status = _USAGE
            self._stop_all(signal.SIGTERM)
            return
        if self._reload_dirs:
            self._say("waiting for a change to restart it")
            return
        if now - worker.started >= STEADY:
            worker.pause = FIRST_PAUSE
        self._say(f"starting worker {worker.number} again in {worker.pause:g} s")
        worker.restart_at = now + worker.pause
        worker.pause = min(worker.pause * 2, LONGEST_PAUSE)

    def _start(self, worker: _Worker) -> None:
        worker.restart_at = None
        worker.started = time.monotonic()
        worker.process = subprocess.Popen(  # noqa: S603  # our own command line, no shell
            self._command,
            env={**self._environ, WORKER_ENV: str(worker.number)},
            process_group=0,  # Ctrl+C reaches the parent only; it passes signals on
        )
        self._say(f"worker {worker.number} started (pid {worker.process.pid})")

    def _stop_all(self, number: int) -> None:
        self._stopping = True
        for worker in self._workers:
            worker.restart_at = None
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(number)

    def _final_status(self) -> int:
        if self._status is not None:
            return self._status
        failed = [worker.status for worker in self._workers if worker.status]
        return failed[0] if failed else 0

    def _count(self) -> str:
        return "1 worker" if len(self._workers) == 1 else f"{len(self._workers)} workers"

    def _watch(self, stop: threading.Event) -> None:
        import watchfiles  # noqa: PLC0415  # only --reload needs it

        for changes in watchfiles.watch(
            *self._reload_dirs, watch_filter=watchfiles.PythonFilter(), stop_event=stop
        ):
            paths = sorted({Path(path).name for _, path in changes})
            self._changes.put(", ".join(paths))


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL after RELOAD_GRACE seconds: a reload must not hang on a stuck worker."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=RELOAD_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
