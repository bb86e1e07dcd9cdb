"""Shared fixtures: every async test runs on asyncio through anyio's pytest plugin."""

from __future__ import annotations

import inspect

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Aiokafka and dishka's async container need asyncio."""
    return "asyncio"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every coroutine test for anyio, and refuse tests without a docstring."""
    for item in items:
        function = getattr(item, "function", None)
        if function is None:
            continue
        if not (function.__doc__ or "").strip():
            raise pytest.UsageError(f"{item.nodeid}: every test needs a one-line docstring")
        if _is_coroutine(function):
            item.add_marker(pytest.mark.anyio)


def _is_coroutine(function: object) -> bool:
    return inspect.iscoroutinefunction(function)
