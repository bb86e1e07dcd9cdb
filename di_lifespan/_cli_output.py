"""What the command prints: errors as one line, logs, the startup report, progress.

Everything for people goes to stderr (logs, reports, errors); stdout carries only what a
command produces as data (``consume``'s JSON lines, ``graph``, ``asyncapi``, ``check``), so
that it can be piped. In a terminal logs and reports are drawn by rich; piped, logs are plain
one-line records.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from ._report import Outcome, StartupReport

__all__ = ["LOG_LEVELS", "CliError", "Output", "Spinner"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_PIPED_WIDTH = 200  # a report table piped to a file is not wrapped at 80 columns
_REPORT_PREFIX = "startup report:"


class CliError(Exception):
    """A failure the command reports as one line, then exits with ``code``.

    2 is a usage error (a bad target, option or configuration), 1 anything else.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        self.message = message
        self.code = code
        super().__init__(message)


class _WithoutStartupReport(logging.Filter):
    """Drop the lifespan's own startup-report records: the command prints the report itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_REPORT_PREFIX))


class Output:
    """The command's stderr: a rich console in a terminal, plain text when piped."""

    def __init__(self, *, debug: bool = False, prefix: str = "") -> None:
        self.debug = debug
        self.prefix = prefix  # "worker 2: " in a worker process
        console = Console(stderr=True, highlight=False)
        if not console.is_terminal:
            console = Console(stderr=True, highlight=False, width=_PIPED_WIDTH)
        self.console = console

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    def configure_logging(self, level: str, *, client_level: str = "warning") -> None:
        """Send every log record at ``level`` or above to stderr (replacing other handlers).

        The Kafka client's own records show from ``client_level`` up, or all of them at
        ``debug``.
        """
        handler: logging.Handler
        if self.interactive:
            handler = RichHandler(console=self.console, show_path=False, markup=False)
            handler.setFormatter(logging.Formatter(f"{self.prefix}%(name)s: %(message)s"))
        else:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter(f"%(asctime)s %(levelname)s {self.prefix}%(name)s: %(message)s")
            )
        handler.addFilter(_WithoutStartupReport())
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(level.upper())
        # The Kafka client narrates every group join at INFO: only with --log-level debug.
        logging.getLogger("aiokafka").setLevel(
            "DEBUG" if level.upper() == "DEBUG" else client_level.upper()
        )

    def info(self, text: str) -> None:
        """One line for the person running the command."""
        self.console.print(escape(self.prefix + text), soft_wrap=True)

    def warning(self, text: str) -> None:
        """``warning: text`` as one line."""
        self.console.print(f"[bold yellow]warning:[/] {escape(self.prefix + text)}", soft_wrap=True)

    def error(self, text: str, error: BaseException | None = None) -> None:
        """``error: text`` as one line; with ``--debug`` the traceback of ``error`` first."""
        if self.debug and error is not None:
            trace = "".join(traceback.format_exception(error))
            self.console.print(escape(trace.rstrip()), soft_wrap=True)
        first, *rest = text.splitlines() or [""]
        hint = " (more with --debug)" if rest and not self.debug else ""
        self.console.print(
            f"[bold red]error:[/] {escape(self.prefix + first)}{hint}", soft_wrap=True
        )
        if self.debug:
            for line in rest:
                self.console.print(escape(line), soft_wrap=True)

    def report(self, report: StartupReport) -> None:
        """The startup report as a table under its one-line summary."""
        self.console.print(
            f"[bold]{escape(f'{self.prefix}{_REPORT_PREFIX} {report.summary()}')}[/]",
            soft_wrap=True,
        )
        table = Table(box=None, pad_edge=False)
        for column in ("resource", "start", "took", "outcome"):
            table.add_column(column, justify="right" if column in ("start", "took") else "left")
        for entry in sorted(
            report.resources, key=lambda e: float("inf") if e.offset is None else e.offset
        ):
            outcome = str(entry.outcome) + (f": {entry.error}" if entry.error else "")
            style = "green" if entry.outcome is Outcome.OK else "red"
            table.add_row(
                escape(entry.name),
                _seconds(entry.offset, "+"),
                _seconds(entry.duration),
                f"[{style}]{escape(outcome)}[/]",
            )
        self.console.print(table)

    def spinner(self, text: str) -> Spinner:
        """A spinner line showing ``text`` until stopped (in a terminal; nothing when piped)."""
        return Spinner(self, text)


class Spinner:
    """A spinner line that can be updated and stopped early (drawn only in a terminal)."""

    def __init__(self, output: Output, text: str) -> None:
        self._live = output.console.status(text) if output.interactive else None
        self.began = time.monotonic()
        if self._live is not None:
            self._live.start()

    def update(self, text: str) -> None:
        if self._live is not None:
            self._live.update(text)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _seconds(value: float | None, sign: str = "") -> str:
    return "-" if value is None else f"{sign}{value:.3f}s"
