"""The iris service: a model set up at startup serves predictions from a topic to a topic.

Run it with ``make demo`` (or ``python -m examples.iris_service``). It runs on a local
Kafka-protocol broker started with the app (``embedded://``; set ``DI_LIFESPAN_BROKER`` to
``kafka://host:9092`` for a real Kafka, or ``memory://``). It starts the app (the startup
report shows the model trained in a worker thread while the prediction log opens), publishes a
few flowers and one invalid message, lets the handlers classify and audit them, prints what
reached each topic, and stops: in-flight work finishes, offsets are committed, and the
resources are finalized in reverse order.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from pydantic_settings import BaseSettings, SettingsConfigDict

from di_lifespan import App, FromDishka, Message, Provider, Scope, provide
from examples.iris import IrisInput, IrisModel, IrisPrediction

DATA = Path(__file__).parent / "data" / "iris_sample.csv"


class Settings(BaseSettings):
    """Read from IRIS_* environment variables (and an env file, with App(env_file=...))."""

    model_config = SettingsConfigDict(env_prefix="IRIS_")

    training_data: Path = DATA
    prediction_log: Path = Path(tempfile.gettempdir()) / "di_lifespan_predictions.log"


class PredictionLog:
    """Appends one line per audited prediction to a file kept open while the app runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        self._file = path.open("a", encoding="utf-8")
        self._changed = anyio.Event()

    def write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()
        self.written += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int) -> None:
        """Return once ``count`` lines were written."""
        while self.written < count:
            await self._changed.wait()

    def close(self) -> None:
        self._file.close()


class DeadLetters:
    """What reached the dead-letter topic, as the operator's report shows it."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = anyio.Event()

    def add(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int) -> None:
        """Return once ``count`` dead letters were seen."""
        while len(self.lines) < count:
            await self._changed.wait()


class Resources(Provider):
    """The service's resources: plain dishka generator providers."""

    @provide(scope=Scope.APP)
    async def model(self, settings: Settings) -> AsyncIterator[IrisModel]:
        # Training is blocking work: a thread lets the other resources start meanwhile.
        model = await anyio.to_thread.run_sync(IrisModel.train, settings.training_data)
        print(f"model trained on {settings.training_data.name}: {sorted(model.centroids)}")
        yield model
        print("model released")

    @provide(scope=Scope.APP)
    async def prediction_log(self, settings: Settings) -> AsyncIterator[PredictionLog]:
        log = PredictionLog(settings.prediction_log)
        yield log
        log.close()
        print(f"prediction log closed after {log.written} lines")

    dead_letters = provide(DeadLetters, scope=Scope.APP)


# A local Kafka-protocol broker unless DI_LIFESPAN_BROKER names another.
app = App(
    Resources(), settings=Settings, broker=os.environ.get("DI_LIFESPAN_BROKER") or "embedded://"
)


@app.subscriber("input_data", group="iris")
@app.publisher("predictions")
async def predict(flower: IrisInput, model: FromDishka[IrisModel]) -> IrisPrediction:
    """Classify one flower; the prediction is published to "predictions"."""
    return model.predict(flower)


@app.subscriber("predictions", group="audit")
async def audit(
    prediction: IrisPrediction, message: Message, log: FromDishka[PredictionLog]
) -> None:
    """Record each prediction with the flower's key."""
    log.write(f"{(message.key or b'').decode()} -> {prediction.species}")


@app.subscriber("input_data.dlq", group="operator", dead_letter=None)
async def report_dead_letter(message: Message, inbox: FromDishka[DeadLetters]) -> None:
    """Show the operator each message that was put aside, and why."""
    kind, error = message.header("x-error-type"), message.header("x-error")
    inbox.add(f"dead letter {json.loads(message.value)} ({kind}): {error}")


@app.after_startup
def check_model(model: FromDishka[IrisModel]) -> None:
    """Refuse to start with a model that gets a textbook setosa wrong."""
    setosa = IrisInput(sepal_length=5.1, sepal_width=3.5, petal_length=1.4, petal_width=0.2)
    if model.predict(setosa).species != "setosa":
        raise RuntimeError("the model does not recognise a setosa")


FLOWERS = {
    "flower-1": IrisInput(sepal_length=5.0, sepal_width=3.4, petal_length=1.5, petal_width=0.2),
    "flower-2": IrisInput(sepal_length=6.1, sepal_width=2.8, petal_length=4.7, petal_width=1.2),
    "flower-3": IrisInput(sepal_length=6.7, sepal_width=3.1, petal_length=5.6, petal_width=2.4),
}


async def main() -> None:
    """Run the service, feed it flowers and one bad message, show where everything went."""
    async with app:
        log = await app.container.get(PredictionLog)
        inbox = await app.container.get(DeadLetters)
        for key, flower in FLOWERS.items():
            await app.publish("input_data", flower, key=key)
        await app.publish("input_data", {"sepal_length": -1}, key="flower-4")
        with anyio.fail_after(60):
            await log.wait_for(len(FLOWERS))
            await inbox.wait_for(1)
        print(f"audited: {log.path.read_text().splitlines()[-len(FLOWERS) :]}")
        for line in inbox.lines:
            print(line)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # its group-join chatter
    anyio.run(main)
