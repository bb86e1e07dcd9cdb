"""The iris service: the model is fitted at startup and serves predictions from topic to topic.

Its resources are plain dishka generator providers: the model (fitted in a worker thread
while the prediction log opens) and the prediction log. ``predict`` reads flowers from
``input_data`` and publishes each prediction to ``predictions``; ``audit`` records them; a
flower that does not validate goes, after its retries, to ``input_data.dlq``, where the
operator's handler reports why. ``python -m examples.iris`` runs it end to end.

It runs on a local Kafka-protocol broker started with the app (``embedded://``) unless
``DI_LIFESPAN_BROKER`` names another (``kafka://host:9092``, ``memory://``).
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
from examples.iris.model import IrisInput, IrisModel, IrisPrediction

logger = logging.getLogger("examples.iris")


class Settings(BaseSettings):
    """Read from IRIS_* environment variables (and an env file, with App(env_file=...))."""

    model_config = SettingsConfigDict(env_prefix="IRIS_")

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
    async def model(self) -> AsyncIterator[IrisModel]:
        # Fitting is blocking work: in a thread, it lets the other resources start meanwhile.
        model = await anyio.to_thread.run_sync(IrisModel.fit)
        logger.info("model loaded: logistic regression over %s", ", ".join(model.species))
        yield model
        logger.info("model cleared")

    @provide(scope=Scope.APP)
    async def prediction_log(self, settings: Settings) -> AsyncIterator[PredictionLog]:
        log = PredictionLog(settings.prediction_log)
        yield log
        log.close()
        logger.info("prediction log closed after %d lines", log.written)

    dead_letters = provide(DeadLetters, scope=Scope.APP)


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
