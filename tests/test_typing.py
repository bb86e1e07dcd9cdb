"""What mypy sees of the public API: snippets type-checked with mypy's own API, once a session.

Each snippet is a small user module. A line that must fail carries ``# error: [code]``; every
other line must pass. The package under test is this checkout's (``MYPYPATH``), with the
project's mypy configuration (strict).
"""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import pytest
from mypy import api

from di_lifespan import App, Router

ROOT = Path(__file__).resolve().parent.parent

SNIPPETS = {
    "shutdown_error": """
        from typing import assert_type

        from di_lifespan import ShutdownError, ShutdownStepError


        def steps(error: ShutdownError) -> list[str]:
            assert_type(error.exceptions, tuple[ShutdownStepError, ...])
            return [step.step for step in error.exceptions]  # .step: no narrowing needed
    """,
    "override": """
        from typing import Annotated, Optional, Protocol

        from di_lifespan.testing import override


        class Model: ...
        class FakeModel(Model): ...
        class Other: ...


        class Repository(Protocol):
            def get(self) -> int: ...


        class MemoryRepository:
            def get(self) -> int:
                return 1


        override(Model, FakeModel())
        override(Model, Model(), component="shadow")
        override(float, 1)
        override(Repository, MemoryRepository())
        override(Annotated[Model, "tagged"], FakeModel())
        override(Optional[Model], None)
        override(list[int], [1, 2])
        override(Model, Other())  # error: [arg-type]
        override(int, "1")  # error: [arg-type]
        override(Model, FakeModel)  # error: [arg-type]
        override(Model, None)  # error: [arg-type]
        override(Repository, Other())  # error: [arg-type]
        override(list[int], ["1"])  # error: [list-item]
    """,
    "subscriber": """
        from di_lifespan import App, Retry

        app = App()


        @app.subscriber("in", "more", group="g", retry=Retry(attempts=2), max_concurrency=4)
        async def handle(number: int) -> None: ...


        async def use() -> None:
            await handle(1)
            await handle("1")  # error: [arg-type]


        app.subscriber("in", group=1)  # error: [arg-type]
        app.subscriber("in", retries=3)  # error: [call-arg]
        app.subscriber()  # error: [call-arg]
    """,
}

MARK = re.compile(r"#\s*error:\s*\[([\w-]+)\]")
Errors = dict[str, set[tuple[int, str]]]  # per snippet: (line, error code)
ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> Errors:
    """Run mypy once over every snippet; return each snippet's (line, code) errors."""
    folder = tmp_path_factory.mktemp("typing")
    for name, code in SNIPPETS.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(code), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MYPYPATH", str(ROOT))  # this checkout's package, not an installed one
        stdout, stderr, _ = api.run(
            [
                "--config-file",
                str(ROOT / "pyproject.toml"),
                "--cache-dir",
                str(ROOT / ".mypy_cache"),
                "--no-error-summary",
                "--show-error-codes",
                *(str(folder / f"{name}.py") for name in SNIPPETS),
            ]
        )
    assert stderr == ""
    errors: Errors = {name: set() for name in SNIPPETS}
    for line in stdout.splitlines():
        found = ERROR.match(line)
        assert found is not None or ": note: " in line, line
        if found is not None:
            errors[Path(found["file"]).stem].add((int(found["line"]), found["code"]))
    return errors


def expected(name: str) -> set[tuple[int, str]]:
    """The (line, code) pairs a snippet's ``# error:`` marks ask for."""
    lines = textwrap.dedent(SNIPPETS[name]).splitlines()
    return {
        (number, mark[1])
        for number, text in enumerate(lines, start=1)
        if (mark := MARK.search(text)) is not None
    }


def test_shutdown_error_exceptions_are_typed_as_steps(
    mypy_errors: Errors,
) -> None:
    """Mypy sees ShutdownError.exceptions as tuple[ShutdownStepError, ...], not groups."""
    assert mypy_errors["shutdown_error"] == expected("shutdown_error") == set()


def test_override_rejects_a_value_of_another_type(
    mypy_errors: Errors,
) -> None:
    """override(Type, value) fails type-checking for a value that is not a Type.

    Subclasses, protocols and special forms (Annotated, Optional) pass.
    """
    assert len(expected("override")) == 6
    assert mypy_errors["override"] == expected("override")


def test_app_subscriber_is_checked_against_router_subscriber(
    mypy_errors: Errors,
) -> None:
    """app.subscriber takes Router.subscriber's parameters, and keeps the handler's type."""
    assert len(expected("subscriber")) == 4
    assert mypy_errors["subscriber"] == expected("subscriber")


def test_app_subscriber_shows_router_subscriber_parameters() -> None:
    """inspect.signature (and so help()) shows App.subscriber with Router.subscriber's list."""
    assert inspect.signature(App.subscriber) == inspect.signature(Router.subscriber)
    assert inspect.signature(App().subscriber) == inspect.signature(Router().subscriber)
