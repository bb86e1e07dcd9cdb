"""Startup of 10 independent resources of 100 ms each: di_lifespan against plain dishka.

Plain dishka creates APP resources lazily, one ``get`` at a time; di_lifespan creates them
all at startup, concurrently. Both run in this one process, in alternating rounds, and the
best round of each is printed side by side with their ratio. Also reports the memory an idle
started app holds (tracemalloc). Run: ``make bench`` or ``python benchmarks/startup.py``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.lowlevel
import dishka

from di_lifespan import App, Provider, Scope

SETUP_SECONDS = 0.1
RESOURCES = 10


def resource_types(count: int) -> list[type]:
    """``count`` distinct resource classes."""
    return [type(f"Resource{index}", (), {}) for index in range(count)]


def slow_provider(types: list[type]) -> Provider:
    """A provider giving each type from an async generator whose setup takes 100 ms."""
    provider = Provider(scope=Scope.APP)
    for resource_type in types:
        provider.provide(slow_setup(resource_type), provides=resource_type)
    return provider


def slow_setup(resource_type: type) -> Callable[[], AsyncIterator[object]]:
    """An async generator provider for ``resource_type`` that takes 100 ms to set up."""

    async def setup() -> AsyncIterator[object]:
        await anyio.sleep(SETUP_SECONDS)
        yield resource_type()

    return setup


async def time_di_lifespan(types: list[type]) -> float:
    """Seconds from entering the app until every resource is ready."""
    app = App(slow_provider(types))
    began = time.perf_counter()
    async with app:
        ready = time.perf_counter() - began
        await anyio.lowlevel.checkpoint()  # the app is up: the shutdown is not measured
    return ready


async def time_plain_dishka(types: list[type]) -> float:
    """Seconds for plain dishka to create every resource, the way a service first uses them."""
    container = dishka.make_async_container(slow_provider(types))
    began = time.perf_counter()
    for resource_type in types:
        await container.get(resource_type)
    all_created = time.perf_counter() - began
    await container.close()
    return all_created


async def idle_app_memory(types: list[type]) -> int:
    """Bytes allocated (tracemalloc) by building and starting the app, held while it idles."""
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    app = App(slow_provider(types))
    async with app:
        held = tracemalloc.get_traced_memory()[0] - baseline
    tracemalloc.stop()
    return held


async def main(rounds: int) -> None:
    """Run both in alternating rounds and print the best of each side by side."""
    types = resource_types(RESOURCES)
    ours: list[float] = []
    peer: list[float] = []
    for _ in range(rounds):
        ours.append(await time_di_lifespan(types))
        peer.append(await time_plain_dishka(types))
    ours_best = min(ours)
    peer_best = min(peer)
    memory = await idle_app_memory(types)
    print(
        f"startup of {RESOURCES} independent resources of {SETUP_SECONDS * 1000:.0f} ms each,"
        f" best of {rounds} rounds"
    )
    print(f"{'':32}{'seconds':>10}")
    print(f"{'di_lifespan (eager, concurrent)':32}{ours_best:>10.3f}")
    print(f"{'dishka (lazy, one by one)':32}{peer_best:>10.3f}")
    print(f"{'ratio dishka / di_lifespan':32}{peer_best / ours_best:>10.1f}x")
    print(f"target: di_lifespan <= 0.120 s -> {'met' if ours_best <= 0.120 else 'MISSED'}")
    print(f"memory held by an idle started app (tracemalloc): {memory / 1024:.1f} KiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each (default 7)")
    anyio.run(main, parser.parse_args().rounds)
