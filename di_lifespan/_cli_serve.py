"""``di-lifespan run`` in one process: start with progress, print the report, stop on a signal.

The same stop rules as ``App.run()``: SIGINT or SIGTERM stops gracefully, a second SIGINT
cuts the shutdown short (exit status 130); a failed startup, a crashed subscriber or a failed
shutdown step exits with 1.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ._app import App, AppStatus
from ._broker import Broker
from ._cli_output import CliError, Output
from ._errors import ConfigurationError, ShutdownError, StartupError
from ._kafka import EMBEDDED_SESSION_TIMEOUT_MS
from ._report import Outcome

__all__ = ["serve"]

logger = logging.getLogger("di_lifespan")

FORCED = 130
_PROGRESS_EVERY = 0.1  # seconds between updates of the startup spinner
_LOG_PROGRESS_EVERY = 5.0  # seconds between "still starting" log lines, without a terminal


class _Run:
    """What one served run learned: whether it became ready and whether it was forced."""

    def __init__(self) -> None:
        self.ready = False
        self.forced = False
        self.stopping = anyio.CancelScope()


async def serve(
    app: App,
    output: Output,
    *,
    broker: Broker | None,
    env_file: Path | None,
    options: Mapping[str, Any],
) -> int:
    """Run ``app`` until a signal; return the exit status."""
    run = _Run()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as watchers:
            watchers.start_soon(_watch_signals, app, signals, run)
            try:
                status = await _serve(
                    app,
                    output,
                    run,
                    watchers=watchers,
                    broker=broker,
                    env_file=env_file,
                    options=options,
                )
            finally:
                watchers.cancel_scope.cancel()
    return status


async def _serve(
    app: App,
    output: Output,
    run: _Run,
    *,
    watchers: TaskGroup,
    broker: Broker | None,
    env_file: Path | None,
    options: Mapping[str, Any],
) -> int:
    spinner = output.spinner("starting")
    watchers.start_soon(_show_progress, app, spinner.update, output.interactive)
    try:
        with run.stopping:
            async with app.lifespan(broker=broker, env_file=env_file, options=options):
                spinner.stop()
                run.ready = True
                _started(app, output, broker)
                await anyio.sleep_forever()
    except ConfigurationError as error:
        raise CliError(str(error), 2) from error
    except StartupError as error:
        spinner.stop()
        if app.startup_report is not None and app.startup_report.resources:
            output.report(app.startup_report)
        output.error(str(error), error)
        for note in getattr(error, "__notes__", ()):
            output.error(note)
        return 1
    except ShutdownError:
        return FORCED if run.forced else 1  # each failed step was logged as it failed
    finally:
        spinner.stop()
    if run.forced:
        return FORCED
    if not run.ready:
        logger.warning("stopped by a signal before startup finished")
        return 1
    output.info("stopped")
    return 0


def _started(app: App, output: Output, broker: Broker | None) -> None:
    report = app.startup_report
    if report is not None:
        output.report(report)
    running = broker or app.broker
    if running.url == "embedded://":
        address = getattr(running, "bootstrap_servers", None)
        output.info(
            f"embedded broker at kafka://{address}"
            f"?idempotent=false&session_timeout_ms={EMBEDDED_SESSION_TIMEOUT_MS}"
        )
    output.info("ready (Ctrl+C to stop)")


async def _show_progress(app: App, update: Any, interactive: bool) -> None:  # noqa: FBT001  # started with start_soon
    """Say on the spinner which resources are being set up, for how long.

    Without a terminal (no spinner) a log line says it every ``_LOG_PROGRESS_EVERY`` seconds.
    """
    logged = time.monotonic()

    def show(text: str) -> None:
        nonlocal logged
        update(text)
        if not interactive and time.monotonic() - logged >= _LOG_PROGRESS_EVERY:
            logged = time.monotonic()
            logger.info("still %s", text)

    while app.status is not AppStatus.RUNNING:
        report = app.startup_report
        if report is not None and app.status is AppStatus.STARTING:
            now = time.perf_counter() - report.began
            pending = [
                f"{entry.name} {now - entry.offset:.1f}s"
                for entry in report.resources
                if entry.offset is not None and entry.outcome is Outcome.NOT_STARTED
            ]
            if pending:
                show(f"starting: {', '.join(pending)}")
            elif report.resources and all(e.outcome is Outcome.OK for e in report.resources):
                show(f"connecting to {report.broker} and subscribing (resources ready)")
        await anyio.sleep(_PROGRESS_EVERY)


async def _watch_signals(app: App, signals: AsyncIterator[int], run: _Run) -> None:
    async for received in signals:
        if not run.stopping.cancel_called:
            logger.info(
                "received %s: stopping gracefully (Ctrl+C again to exit at once)",
                signal.Signals(received).name,
            )
            run.stopping.cancel()
        elif received == signal.SIGINT:
            logger.warning("second interrupt: cancelling the rest of the shutdown")
            run.forced = True
            app.force_stop()
