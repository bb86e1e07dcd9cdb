"""What the tests share: providers that record what happens to them, brokers, pytest runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from di_lifespan import Provider, Scope, provide


class Journal:
    """An ordered record of setups ("+Name"), finalizers ("-Name") and other events."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def __call__(self, event: str) -> None:
        self.events.append(event)

    def setups(self) -> list[str]:
        return [event[1:] for event in self.events if event.startswith("+")]

    def finalizers(self) -> list[str]:
        return [event[1:] for event in self.events if event.startswith("-")]


class Settings:
    """The shared root of the diamond."""


class Database:
    """One side of the diamond."""


class Cache:
    """The other side of the diamond."""


class Service:
    """The top of the diamond: needs Database and Cache, which both need Settings."""


class Diamond(Provider):
    """Settings -> (Database, Cache) -> Service; Cache finishes its setup before Database."""

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal
        self.cache_ready = anyio.Event()

    @provide(scope=Scope.APP)
    async def settings(self) -> AsyncIterator[Settings]:
        self.journal("+Settings")
        yield Settings()
        self.journal("-Settings")

    @provide(scope=Scope.APP)
    async def database(self, settings: Settings) -> AsyncIterator[Database]:
        await self.cache_ready.wait()  # makes the creation order exact: Cache, then Database
        self.journal("+Database")
        yield Database()
        self.journal("-Database")

    @provide(scope=Scope.APP)
    def cache(self, settings: Settings) -> Iterator[Cache]:
        self.journal("+Cache")
        self.cache_ready.set()
        yield Cache()
        self.journal("-Cache")

    @provide(scope=Scope.APP)
    async def service(self, database: Database, cache: Cache) -> AsyncIterator[Service]:
        self.journal("+Service")
        yield Service()
        self.journal("-Service")


# --- running pytest on a made-up project ------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str
) -> pytest.RunResult:
    """Run pytest on ``pytester``'s project in a new interpreter that imports this checkout.

    pytester puts only the project on the child's path; without this checkout first there,
    the child would import whichever di_lifespan is installed.
    """
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    # Hypothesis is not part of such a project, and its plugin alone costs seconds a run.
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:hypothesispytest", *args
    )
