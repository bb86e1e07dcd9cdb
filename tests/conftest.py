"""Shared fixtures: every async test runs on asyncio through anyio's pytest plugin."""

from __future__ import annotations

import inspect

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def anyio_backend() -> str:
    """Aiokafka and dishka's async container need asyncio."""
    return "asyncio"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Mark every coroutine test for anyio before anyio's own plugin looks for the mark."""
    if name.startswith("test") and inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse tests without a docstring: each one says the behaviour it pins."""
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and not (function.__doc__ or "").strip():
            raise pytest.UsageError(f"{item.nodeid}: every test needs a one-line docstring")
