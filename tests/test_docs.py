"""The code examples in the docs run as written, and print what the docs say they print."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(page: Path) -> list[str]:
    """Every ```python block of a page, in order, but the test modules run under pytest."""
    blocks = BLOCK.findall(page.read_text(encoding="utf-8"))
    return [block for block in blocks if "from myservice import" not in block]


def pytest_blocks(page: Path) -> list[str]:
    """The blocks of a page that are test modules for pytest, importing ``myservice``."""
    return [
        block
        for block in BLOCK.findall(page.read_text(encoding="utf-8"))
        if "from myservice import" in block
    ]


PAGES = sorted(page for page in DOCS.glob("*.md") if python_blocks(page))


def run_block(code: str, name: str) -> str:
    """Execute one block as a module of its own, then its test functions; return the output."""
    namespace: dict[str, Any] = {"__name__": name.replace("/", "_")}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, name, "exec", dont_inherit=True), namespace)  # noqa: S102  # our own docs
        for test_name, function in list(namespace.items()):
            if test_name.startswith("test_") and inspect.iscoroutinefunction(function):
                anyio.run(function)
    return output.getvalue()


def test_the_docs_have_examples() -> None:
    """The overview and the guides carry runnable examples."""
    assert {page.name for page in PAGES} >= {"index.md", "lifespan.md", "handlers.md", "testing.md"}


def test_the_testing_guide_runs_its_tests() -> None:
    """Every test function in the testing guide runs and passes (five of them)."""
    blocks = python_blocks(DOCS / "testing.md")
    assert len(blocks) == 3
    names = [
        line
        for block in blocks
        for line in block.splitlines()
        if line.startswith("async def test_")
    ]
    assert len(names) == 5
    for number, block in enumerate(blocks, start=1):
        run_block(block, f"docs/testing_{number}")


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
    """The finalizer, task, hook-order, time-limit and FastAPI-style examples print their lines."""
    finalizer, heartbeat, hooks, limits, fastapi_style = python_blocks(DOCS / "lifespan.md")
    assert run_block(finalizer, "docs/finalizer").splitlines() == ["flushing 1 rows"]
    assert run_block(heartbeat, "docs/heartbeat").splitlines() == ["beating: True"]
    assert run_block(hooks, "docs/hooks").splitlines() == [
        "1. on_startup",
        "2. after_startup: cache warmed",
        "3. on_shutdown",
        "4. after_shutdown: 1 cache entries",
    ]
    assert run_block(limits, "docs/limits").splitlines() == [
        "resource Model failed to start: did not finish within 0.1 s"
    ]
    assert run_block(fastapi_style, "docs/fastapi_style").splitlines() == [
        "running ['setosa', 'versicolor']",
        "lifespan exit",
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


def test_the_plugin_example_passes_under_pytest(pytester: pytest.Pytester) -> None:
    """The pytest-plugin example, with the guide's app as myservice.py, passes under pytest."""
    (plugin_example,) = pytest_blocks(DOCS / "testing.md")
    service = python_blocks(DOCS / "testing.md")[1]
    pytester.makepyfile(myservice=service, test_plugin_example=plugin_example)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_plugin_example.py")
    result.assert_outcomes(passed=1)
