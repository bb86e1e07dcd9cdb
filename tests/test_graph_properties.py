"""Random resource graphs, some setups and finalizers failing: the lifespan's rules still hold.

Each example builds a dependency graph of generated types (``R0``, ``R1``, ...), each with a
provider of a random kind (sync or async, factory or generator), registered dynamically with
``Provider().provide(func, provides=Rk, scope=Scope.APP)``; some setups raise, some
finalizers raise, async setups pause a random number of times so that the concurrent startup
interleaves. Whatever the plan, the app must:

- run each setup at most once, and only after everything it needs is ready;
- finalize every resource whose setup finished, exactly once, dependents before their
  dependencies, whatever the other finalizers do;
- name, in StartupError, a resource whose setup failed, with a dependency path along real
  edges; report each failed finalizer once (ShutdownError, or notes on the StartupError).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from di_lifespan import App, Provider, Scope, ShutdownError, StartupError

KINDS = ("factory", "async factory", "generator", "async generator")


@dataclass(frozen=True)
class Node:
    """One resource of a plan."""

    needs: tuple[int, ...]
    kind: str
    setup_fails: bool
    finalizer_fails: bool
    pauses: int

    @property
    def finalized(self) -> bool:
        return "generator" in self.kind


class SetupFailedError(Exception):
    """Raised by a setup the plan makes fail."""


class FinalizerFailedError(Exception):
    """Raised by a finalizer the plan makes fail."""


@st.composite
def plans(draw: st.DrawFn) -> list[Node]:
    """A graph of 1 to 7 resources; each needs up to 3 earlier ones."""
    nodes: list[Node] = []
    for index in range(draw(st.integers(1, 7))):
        needs = draw(st.sets(st.integers(0, index - 1), max_size=3)) if index else set()
        kind = draw(st.sampled_from(KINDS))
        nodes.append(
            Node(
                needs=tuple(sorted(needs)),
                kind=kind,
                setup_fails=draw(st.integers(0, 5)) == 0,
                finalizer_fails="generator" in kind and draw(st.integers(0, 3)) == 0,
                pauses=draw(st.integers(0, 3)) if kind.startswith("async") else 0,
            )
        )
    return nodes


def build(plan: list[Node], events: list[tuple[str, int]]) -> Provider:
    """A provider for the plan; each setup and finalizer records (event, resource number)."""
    types = [type(f"R{index}", (), {}) for index in range(len(plan))]
    provider = Provider()
    for index, node in enumerate(plan):
        source = _source(index, node, events, types[index])
        parameters = [
            inspect.Parameter(
                f"r{need}", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=types[need]
            )
            for need in node.needs
        ]
        source.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]  # dishka reads it
        source.__annotations__ = {p.name: p.annotation for p in parameters}
        source.__name__ = source.__qualname__ = f"make_r{index}"
        provider.provide(source, provides=types[index], scope=Scope.APP)
    return provider


def _source(
    index: int, node: Node, events: list[tuple[str, int]], made: type
) -> Callable[..., Any]:
    def begin() -> None:
        events.append(("begin", index))

    def ready() -> Any:
        if node.setup_fails:
            raise SetupFailedError(f"R{index}")
        events.append(("ready", index))
        return made()

    def finalize() -> None:
        events.append(("final", index))
        if node.finalizer_fails:
            raise FinalizerFailedError(f"R{index}")

    async def pause() -> None:
        for _ in range(node.pauses):
            await anyio.lowlevel.checkpoint()

    def factory(*_: object) -> Any:
        begin()
        return ready()

    async def async_factory(*_: object) -> Any:
        begin()
        await pause()
        return ready()

    def generator(*_: object) -> Iterator[Any]:
        begin()
        yield ready()
        finalize()

    async def async_generator(*_: object) -> AsyncIterator[Any]:
        begin()
        await pause()
        yield ready()
        await pause()
        finalize()

    sources: dict[str, Callable[..., Any]] = {
        "factory": factory,
        "async factory": async_factory,
        "generator": generator,
        "async generator": async_generator,
    }
    return sources[node.kind]


async def run(plan: list[Node]) -> tuple[list[tuple[str, int]], BaseException | None]:
    """Start and stop an app of the plan; return the events and the error it raised, if any."""
    events: list[tuple[str, int]] = []
    app = App(build(plan, events), startup_timeout=5, shutdown_timeout=5)
    try:
        with anyio.fail_after(10):
            async with app:
                events.append(("running", -1))
    except (StartupError, ShutdownError) as error:
        return events, error
    return events, None


def check_order(plan: list[Node], events: list[tuple[str, int]]) -> None:
    """Each setup once, after its needs; each finished generator finalized once, in order."""
    begun = [index for event, index in events if event == "begin"]
    assert len(begun) == len(set(begun)), f"a setup ran twice: {events}"
    position = {event: number for number, event in enumerate(events)}
    for index, node in enumerate(plan):
        if ("begin", index) in position:
            for need in node.needs:
                assert position.get(("ready", need), len(events)) < position[("begin", index)]
        finals = events.count(("final", index))
        expected = 1 if node.finalized and ("ready", index) in position else 0
        assert finals == expected, f"R{index} finalized {finals} times: {events}"
        for need in node.needs:
            if ("final", index) in position and ("final", need) in position:
                assert position[("final", index)] < position[("final", need)], events


def failed_finalizers(plan: list[Node], events: list[tuple[str, int]]) -> set[str]:
    """The finalizer steps the plan made fail, of those that ran."""
    return {
        f"finalizer of R{index} failed: FinalizerFailedError: R{index}"
        for index, node in enumerate(plan)
        if node.finalizer_fails and ("final", index) in events
    }


@settings(max_examples=60, deadline=None)
@given(plans())
def test_every_started_resource_is_finalized_once_in_dependency_order(plan: list[Node]) -> None:
    """Setups run once, after their needs; finished generators are finalized once, in order."""
    events, _ = anyio.run(run, plan)
    check_order(plan, events)
    if not any(node.setup_fails for node in plan):
        assert events.count(("running", -1)) == 1
        assert {index for event, index in events if event == "ready"} == set(range(len(plan)))


@settings(max_examples=60, deadline=None)
@given(plans())
def test_failures_name_the_failed_resource_and_every_failed_finalizer(plan: list[Node]) -> None:
    """StartupError names a failed setup along real edges; each failed finalizer is reported."""
    events, error = anyio.run(run, plan)
    broken_finalizers = failed_finalizers(plan, events)
    if not any(node.setup_fails for node in plan):
        if broken_finalizers:
            assert isinstance(error, ShutdownError)
            assert {str(step) for step in error.exceptions} == broken_finalizers
        else:
            assert error is None
        return
    assert isinstance(error, StartupError)
    assert ("running", -1) not in events
    index = int(error.what.removeprefix("resource R"))
    assert plan[index].setup_fails
    assert ("begin", index) in events
    assert isinstance(error.__cause__, SetupFailedError)
    assert str(error.__cause__) == f"R{index}"
    assert error.path[-1] == f"R{index}"
    numbers = [int(name.removeprefix("R")) for name in error.path]
    for outer, inner in itertools.pairwise(numbers):
        assert inner in plan[outer].needs, f"{error.path} is not a chain of needs"
    assert not any(numbers[0] in node.needs for node in plan), "the path stops short"
    notes = {note.removeprefix("while rolling back: ") for note in getattr(error, "__notes__", [])}
    assert notes == broken_finalizers
