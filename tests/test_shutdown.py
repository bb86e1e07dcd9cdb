"""Teardown: every finalizer runs, in reverse creation order, whatever the others do."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterator

import anyio
import pytest

from di_lifespan import (
    App,
    Provider,
    Scope,
    ShutdownError,
    ShutdownStepError,
    ShutdownTimeoutError,
    provide,
)
from tests.resources import Cache, Database, Journal, Settings


class ThreeFinalizers(Provider):
    """Settings -> Database -> Cache, created in that order; Database's finalizer raises."""

    def __init__(self, journal: Journal, database_finalizer: str = "raise") -> None:
        super().__init__()
        self.journal = journal
        self.database_finalizer = database_finalizer

    @provide(scope=Scope.APP)
    def settings(self) -> Iterator[Settings]:
        yield Settings()
        self.journal("-Settings")

    @provide(scope=Scope.APP)
    async def database(self, settings: Settings) -> AsyncIterator[Database]:
        yield Database()
        self.journal("-Database")
        if self.database_finalizer == "raise":
            raise ConnectionError("pool already closed")
        if self.database_finalizer == "hang":
            await anyio.sleep_forever()
        if self.database_finalizer == "cancel":
            raise anyio.get_cancelled_exc_class()()

    @provide(scope=Scope.APP)
    async def cache(self, database: Database) -> AsyncIterator[Cache]:
        yield Cache()
        self.journal("-Cache")


async def test_every_finalizer_runs_and_the_failure_comes_out_as_shutdown_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Of three finalizers the middle one raises: all three run, ShutdownError has that one."""
    journal = Journal()
    with pytest.raises(ShutdownError) as caught:
        async with App(ThreeFinalizers(journal)):
            pass
    assert journal.finalizers() == ["Cache", "Database", "Settings"]
    group = caught.value
    assert isinstance(group, ExceptionGroup)
    assert len(group.exceptions) == 1
    (failure,) = group.exceptions
    assert isinstance(failure, ShutdownStepError)
    assert failure.step == "finalizer of Database"
    assert isinstance(failure.__cause__, ConnectionError)
    assert str(failure) == "finalizer of Database failed: ConnectionError: pool already closed"
    assert "finalizer of Database failed" in caplog.text


async def test_a_hanging_finalizer_is_cut_at_its_limit_and_the_rest_still_run() -> None:
    """A finalizer past shutdown_timeout is cancelled and reported; the others still run."""
    journal = Journal()
    with pytest.raises(ShutdownError) as caught:
        async with App(ThreeFinalizers(journal, "hang"), shutdown_timeout=0.05):
            pass
    assert journal.finalizers() == ["Cache", "Database", "Settings"]
    (failure,) = caught.value.exceptions
    assert isinstance(failure, ShutdownTimeoutError)
    assert failure.timeout == 0.05
    assert str(failure) == "finalizer of Database failed: did not finish within 0.05 s"


async def test_a_cancelled_finalizer_does_not_stop_the_others() -> None:
    """A finalizer that raises a cancellation is reported; the finalizers after it still run."""
    journal = Journal()
    with pytest.raises(ShutdownError) as caught:
        async with App(ThreeFinalizers(journal, "cancel")):
            pass
    assert journal.finalizers() == ["Cache", "Database", "Settings"]
    (failure,) = caught.value.exceptions
    assert isinstance(failure, ShutdownStepError)
    assert failure.reason == "RuntimeError: the finalizer was cancelled"


async def test_shutdown_completes_when_the_caller_is_cancelled() -> None:
    """Cancelling the task that runs the app still runs every finalizer, with no error."""
    journal = Journal()
    app = App(ThreeFinalizers(journal, "ok"))
    with anyio.CancelScope() as scope:
        async with app:
            scope.cancel()
            await anyio.sleep_forever()
    assert journal.finalizers() == ["Cache", "Database", "Settings"]


class Transaction:
    """Commits or rolls back depending on how the lifespan ended."""


class Transactional(Provider):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    @provide(scope=Scope.APP)
    async def transaction(self) -> AsyncGenerator[Transaction, BaseException | None]:
        error = yield Transaction()
        self.journal("rollback" if error is not None else "commit")
        if error is not None:
            self.journal(type(error).__name__)


async def test_generators_receive_the_exception_that_ended_the_lifespan() -> None:
    """A finalizer gets the error that ended the lifespan as the value of its yield."""
    journal = Journal()
    with pytest.raises(KeyError):
        async with App(Transactional(journal)):
            raise KeyError("boom")
    assert journal.events == ["rollback", "KeyError"]


async def test_a_clean_exit_gives_generators_none() -> None:
    """After a clean exit a finalizer's yield gives None."""
    journal = Journal()
    async with App(Transactional(journal)):
        pass
    assert journal.events == ["commit"]


async def test_body_error_wins_over_shutdown_errors(caplog: pytest.LogCaptureFixture) -> None:
    """When the body raised, that error propagates and the shutdown failures are logged."""
    journal = Journal()
    with pytest.raises(KeyError):
        async with App(ThreeFinalizers(journal)):
            raise KeyError("boom")
    assert journal.finalizers() == ["Cache", "Database", "Settings"]
    assert "finalizer of Database failed" in caplog.text


def test_shutdown_error_keeps_its_type_when_split() -> None:
    """ShutdownError.split/subgroup keep the ShutdownError type and the message."""
    errors = [ShutdownStepError("finalizer of A", "x"), ShutdownTimeoutError("finalizer of B", 1)]
    group = ShutdownError("the app stopped with errors", errors)
    timeouts = group.subgroup(ShutdownTimeoutError)
    assert isinstance(timeouts, ShutdownError)
    assert [str(e) for e in timeouts.exceptions] == [
        "finalizer of B failed: did not finish within 1 s"
    ]
    assert str(group) == (
        "the app stopped with errors: finalizer of A failed: x; "
        "finalizer of B failed: did not finish within 1 s"
    )
