"""The code examples in the docs run as written, and print what the docs say they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(page: Path) -> list[str]:
    """Every ```python block of a page, in order."""
    return BLOCK.findall(page.read_text(encoding="utf-8"))


PAGES = sorted(page for page in DOCS.glob("*.md") if python_blocks(page))


def run_block(code: str, name: str) -> str:
    """Execute one block as a module of its own; return what it printed."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, name, "exec", dont_inherit=True), {"__name__": name.replace("/", "_")})  # noqa: S102  # our own docs
    return output.getvalue()


def test_the_docs_have_examples() -> None:
    """The overview and the lifespan guide carry runnable examples."""
    assert {page.name for page in PAGES} >= {"index.md", "lifespan.md"}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_python_block_runs(page: Path) -> None:
    """Each python block of each page runs without error."""
    for number, code in enumerate(python_blocks(page), start=1):
        run_block(code, f"docs/{page.stem}_{number}")


def test_the_overview_example_prints_what_it_says() -> None:
    """The first app prints the prediction, then the finalizer's line."""
    (code,) = python_blocks(DOCS / "index.md")
    assert run_block(code, "docs/index").splitlines() == ["HELLO", "model closed"]


def test_the_lifespan_examples_print_what_their_comments_say() -> None:
    """The finalizer, hook-order and time-limit examples print the documented lines."""
    finalizer, hooks, limits = python_blocks(DOCS / "lifespan.md")
    assert run_block(finalizer, "docs/finalizer").splitlines() == ["flushing 1 rows"]
    assert run_block(hooks, "docs/hooks").splitlines() == [
        "1. on_startup",
        "2. after_startup: cache warmed",
        "3. on_shutdown",
        "4. after_shutdown: 1 cache entries",
    ]
    assert run_block(limits, "docs/limits").splitlines() == [
        "resource Model failed to start: did not finish within 0.1 s"
    ]


def test_the_handler_examples_print_what_their_comments_say() -> None:
    """The handler, injection and dead-letter examples print the documented values."""
    handler, injection, dead_letter = python_blocks(DOCS / "handlers.md")
    assert run_block(handler, "docs/handler") == '[b\'{"species":"setosa"}\']\n'
    assert run_block(injection, "docs/injection") == (
        '[b\'{"item":"pear","from":"orders[0]@0"}\']\n'
    )
    assert run_block(dead_letter, "docs/dead_letter") == (
        "b'42 EUR' bank unreachable (attempt 2) 2\n"
    )
