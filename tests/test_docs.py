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

from tests.resources import run_pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(page: Path) -> list[str]:
    """Every ```python block of a page, in order, but the test modules run under pytest."""
    blocks = BLOCK.findall(page.read_text(encoding="utf-8"))
    return [block for block in blocks if "from myservice import" not in block]


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


def test_the_kafka_example_runs_on_an_embedded_broker() -> None:
    """The Kafka page's app bills and mails an order on embedded:// and prints the line."""
    code, _security = python_blocks(DOCS / "kafka.md")
    assert run_block(code, "docs/kafka").splitlines() == ["mailing an invoice for pear: 6"]


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


def guide_project(page: Path) -> tuple[dict[str, str], list[str]]:
    """The files a guide's examples make (each named in its first line), and its configs."""
    files: dict[str, str] = {}
    configs: list[str] = []
    for language, code in FENCE.findall(page.read_text(encoding="utf-8")):
        first = code.splitlines()[0]
        if language == "toml":
            configs.append(code)
        elif language == "python":
            name = first.removeprefix("# ")
            assert re.fullmatch(r"\w+\.py", name), first
            files[name] = code
    return files, configs


def test_the_testing_guide_names_a_file_for_each_example() -> None:
    """The guide is a whole project: a service, five test modules, and two setups to pick."""
    files, configs = guide_project(DOCS / "testing.md")
    assert list(files) == [
        "test_predict.py",
        "myservice.py",
        "test_myservice.py",
        "test_payments.py",
        "test_options.py",
        "test_plugin.py",
    ]
    assert [("anyio_mode" in c, "asyncio_mode" in c) for c in configs] == [
        (True, False),
        (False, True),
    ]


@pytest.mark.parametrize(
    ("setup", "plugins"),
    [(0, ["-p", "no:asyncio"]), (1, [])],
    ids=["anyio", "pytest-asyncio"],
)
def test_the_testing_guide_passes_as_a_new_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, setup: int, plugins: list[str]
) -> None:
    """The guide's files, with one of its two pyproject.toml setups, pass under pytest.

    Warnings are errors. The anyio setup runs without pytest-asyncio, as a project that
    follows it has none.
    """
    files, configs = guide_project(DOCS / "testing.md")
    pytester.makefile(".toml", pyproject=configs[setup])
    pytester.makepyfile(**{name.removesuffix(".py"): code for name, code in files.items()})
    result = run_pytest(pytester, monkeypatch, "-W", "error", *plugins)
    result.assert_outcomes(passed=7)


def test_the_fastapi_example_prints_what_the_page_says() -> None:
    """The FastAPI page's test prints the counted word, then the finalizer's line."""
    app_and_test, _starlette = python_blocks(DOCS / "fastapi.md")
    assert run_block(app_and_test, "docs/fastapi").splitlines() == [
        "['hello']",
        "counter closed after 1 words",
    ]
