"""What happened to each resource during a startup, as data and as a compact table."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Outcome", "ResourceStart", "StartupReport"]


class Outcome(enum.StrEnum):
    """How the setup of one resource ended."""

    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed out"
    CANCELLED = "cancelled"
    NOT_STARTED = "not started"


@dataclass(slots=True)
class ResourceStart:
    """One resource's setup: when it began (seconds after startup began), how long it took."""

    name: str
    outcome: Outcome = Outcome.NOT_STARTED
    offset: float | None = None
    duration: float | None = None
    error: str | None = None


@dataclass(slots=True)
class StartupReport:
    """Every resource of one startup, in the order their setup began, and the broker used.

    ``broker`` is the broker's URL (a password in it is masked), so that a service that
    runs on the in-process ``memory://`` broker by mistake says so at every start.
    """

    resources: list[ResourceStart] = field(default_factory=list)
    began: float = field(default_factory=time.perf_counter)
    duration: float | None = None
    _broker: str | None = field(default=None, repr=False)

    @property
    def broker(self) -> str | None:
        """The URL of the broker the app started with (None before it is known)."""
        return self._broker

    @broker.setter
    def broker(self, url: str | None) -> None:
        self._broker = None if url is None else _masked(url)

    def __getitem__(self, name: str) -> ResourceStart:
        for entry in self.resources:
            if entry.name == name:
                return entry
        raise KeyError(name)

    @property
    def ok(self) -> bool:
        """Whether every resource started."""
        return all(entry.outcome is Outcome.OK for entry in self.resources)

    def finish(self) -> None:
        """Note how long the whole startup took."""
        self.duration = time.perf_counter() - self.began

    def begin(self, entry: ResourceStart) -> None:
        entry.offset = time.perf_counter() - self.began

    def end(self, entry: ResourceStart, outcome: Outcome, error: str | None = None) -> None:
        if entry.offset is not None:
            entry.duration = time.perf_counter() - self.began - entry.offset
        entry.outcome = outcome
        entry.error = error

    def summary(self) -> str:
        """One line: how many resources started, how long startup took, and on which broker."""
        ready = sum(entry.outcome is Outcome.OK for entry in self.resources)
        took = "" if self.duration is None else f" in {self.duration:.3f}s"
        return f"{ready} of {len(self.resources)} resources ready{took}{_on_broker(self.broker)}"

    def __str__(self) -> str:
        rows = [("resource", "start", "took", "outcome")]
        for entry in sorted(self.resources, key=_start_order):
            outcome = str(entry.outcome)
            if entry.error:
                outcome += f": {entry.error}"
            rows.append(
                (entry.name, _seconds(entry.offset, "+"), _seconds(entry.duration), outcome)
            )
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
            + "  "
            + row[3]
            for row in rows
        )


def _on_broker(url: str | None) -> str:
    if url is None:
        return ""
    if urlsplit(url).scheme == "memory":
        return f", broker {url} (in this process only: nothing reaches Kafka)"
    return f", broker {url}"


def _masked(url: str) -> str:
    """The URL with the password of its user part, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _start_order(entry: ResourceStart) -> float:
    return float("inf") if entry.offset is None else entry.offset


def _seconds(value: float | None, sign: str = "") -> str:
    return "-" if value is None else f"{sign}{value:.3f}s"
