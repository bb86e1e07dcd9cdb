"""Per-message overhead of one handler hop, in memory: di_lifespan against FastStream + dishka.

The same handler on both sides: a pydantic body, two APP-scoped dependencies, and a returned
pydantic model published to an output topic. di_lifespan runs it through its memory broker;
FastStream 0.7 through TestKafkaBroker with dishka-faststream's integration (auto_inject).
Each variant is measured in alternating rounds in this one process, and the best round's time
per message (the least disturbed by other work on the machine) is printed side by side with
the ratio. Variants: the hop alone; the hop with one
REQUEST-scoped dependency made from the message; and the hop plus a sink subscriber on the
output topic.

Run: ``make bench`` or ``python benchmarks/overhead.py`` (needs the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from dishka import make_async_container
from pydantic import BaseModel

from di_lifespan import App, FromDishka, MemoryBroker, Message, Provider, Scope, provide

try:
    from dishka_faststream import FastStreamProvider, setup_dishka
    from faststream import FastStream
    from faststream.kafka import KafkaBroker, TestKafkaBroker
    from faststream.message import StreamMessage
except ImportError as missing:  # pragma: no cover - depends on the bench extra
    raise SystemExit(
        f"this benchmark needs the bench extra: pip install -e '.[bench]' ({missing})"
    ) from None


class IrisInput(BaseModel):
    sepal_length: float
    sepal_width: float
    petal_length: float
    petal_width: float


class IrisPrediction(BaseModel):
    species: str


class Model:
    def predict(self, data: IrisInput) -> str:
        return "setosa" if data.petal_length < 2.5 else "versicolor"


class Scaler:
    factor = 1.0


class Trace:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class Resources(Provider):
    model = provide(Model, scope=Scope.APP)
    scaler = provide(Scaler, scope=Scope.APP)

    @provide(scope=Scope.REQUEST)
    def trace(self, message: Message) -> Trace:
        return Trace(message.offset)


class FastStreamResources(Provider):
    model = provide(Model, scope=Scope.APP)
    scaler = provide(Scaler, scope=Scope.APP)

    @provide(scope=Scope.REQUEST)
    def trace(self, message: StreamMessage[Any]) -> Trace:
        return Trace(0)


BODY = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
Run = Callable[[int], Awaitable[float]]


# --- the handlers both sides run --------------------------------------------------------------


async def predict(
    data: IrisInput, model: FromDishka[Model], scaler: FromDishka[Scaler]
) -> IrisPrediction:
    return IrisPrediction(species=model.predict(data))


async def predict_traced(
    data: IrisInput,
    model: FromDishka[Model],
    scaler: FromDishka[Scaler],
    trace: FromDishka[Trace],
) -> IrisPrediction:
    return IrisPrediction(species=model.predict(data))


def handler_for(variant: str) -> Callable[..., Awaitable[IrisPrediction]]:
    return predict_traced if variant == "request" else predict


class Sink:
    """Counts the predictions that reach the output topic."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self.done = anyio.Event()

    async def __call__(self, prediction: IrisPrediction) -> None:
        self.received += 1
        if self.received == self.expected:
            self.done.set()


# --- di_lifespan -----------------------------------------------------------------------------


def ours(variant: str) -> Run:
    async def run(count: int) -> float:
        broker = MemoryBroker()
        app = App(Resources(), broker=broker)
        app.subscriber("in")(app.publisher("out")(handler_for(variant)))
        sink = Sink(count)
        if variant == "sink":
            app.subscriber("out")(sink.__call__)
        async with app:
            began = time.perf_counter()
            for _ in range(count):
                await app.publish("in", BODY)
            if variant == "sink":
                await sink.done.wait()
            else:
                while broker.pending():
                    await broker.wait_for_change()
            elapsed = time.perf_counter() - began
        if len(broker.messages("out")) != count:
            raise RuntimeError("di_lifespan did not publish one result per message")
        return elapsed / count

    return run


# --- FastStream + dishka-faststream ----------------------------------------------------------


def faststream(variant: str) -> Run:
    async def run(count: int) -> float:
        broker = KafkaBroker()
        app = FastStream(broker)
        broker.subscriber("in")(broker.publisher("out")(handler_for(variant)))
        sink = Sink(count)
        if variant == "sink":
            broker.subscriber("out")(sink.__call__)
        container = make_async_container(FastStreamResources(), FastStreamProvider())
        setup_dishka(container, app, auto_inject=True)
        async with TestKafkaBroker(broker) as test_broker:
            began = time.perf_counter()
            for _ in range(count):
                await test_broker.publish(BODY, "in")
            elapsed = time.perf_counter() - began
        await container.close()
        if variant == "sink" and sink.received != count:
            raise RuntimeError("FastStream's sink did not receive every result")
        return elapsed / count

    return run


VARIANTS = {
    "hop": "one hop: pydantic body, 2 APP deps, result published",
    "request": "the same with one REQUEST-scoped dependency",
    "sink": "one hop plus a sink subscriber on the output",
}


async def measure(run: Run, count: int) -> float:
    return await run(count)


async def main(count: int, rounds: int) -> None:
    rows = []
    for variant, title in VARIANTS.items():
        our_times: list[float] = []
        peer_times: list[float] = []
        await measure(ours(variant), 200)  # warm up both sides
        await measure(faststream(variant), 200)
        for _ in range(rounds):
            our_times.append(await measure(ours(variant), count))
            peer_times.append(await measure(faststream(variant), count // 10))
        rows.append((title, min(our_times), min(peer_times)))
    print(
        f"per-message time, best of {rounds} rounds ({count} messages per di_lifespan round,"
        f" {count // 10} per FastStream round)"
    )
    print(f"{'variant':52}{'di_lifespan':>14}{'FastStream':>14}{'ratio':>9}")
    for title, our_time, peer_time in rows:
        ratio = peer_time / our_time
        print(f"{title:52}{our_time * 1e6:>11.1f} µs{peer_time * 1e6:>11.1f} µs{ratio:>8.0f}x")
    hop, request = rows[0][1], rows[1][1]
    print(
        f"targets: hop <= 10 µs -> {'met' if hop <= 10e-6 else 'MISSED'};"
        f" with REQUEST scope <= 15 µs -> {'met' if request <= 15e-6 else 'MISSED'};"
        f" >= 40x FastStream -> {'met' if rows[0][2] / hop >= 40 else 'MISSED'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages", type=int, default=20_000, help="messages per di_lifespan round"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each (default 5)")
    arguments = parser.parse_args()
    anyio.run(main, arguments.messages, arguments.rounds)
