"""The lifespan demo: settings, a model and a prediction log set up at startup, torn down at exit.

Run it with ``make demo`` (or ``python -m examples.lifespan_demo``). It starts the app, prints
the startup report, classifies a few flowers with the resources the lifespan created, and stops.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from pydantic_settings import BaseSettings, SettingsConfigDict

from di_lifespan import App, FromDishka, Provider, Scope, provide
from examples.iris import IrisInput, IrisModel

DATA = Path(__file__).parent / "data" / "iris_sample.csv"


class Settings(BaseSettings):
    """Read from IRIS_* environment variables (and an env file, with App(env_file=...))."""

    model_config = SettingsConfigDict(env_prefix="IRIS_")

    training_data: Path = DATA
    prediction_log: Path = Path(tempfile.gettempdir()) / "di_lifespan_predictions.log"


class PredictionLog:
    """Appends one line per prediction to a file, kept open for the app's lifetime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def write(self, flower: IrisInput, species: str) -> None:
        self._file.write(f"{flower.model_dump_json()} -> {species}\n")

    def close(self) -> None:
        self._file.close()


class Resources(Provider):
    """The demo's resources: plain dishka generator providers."""

    @provide(scope=Scope.APP)
    async def model(self, settings: Settings) -> AsyncIterator[IrisModel]:
        # Training is blocking work: run it in a thread so other resources start meanwhile.
        model = await anyio.to_thread.run_sync(IrisModel.train, settings.training_data)
        print(f"model trained on {settings.training_data.name}: {sorted(model.centroids)}")
        yield model
        print("model released")

    @provide(scope=Scope.APP)
    async def prediction_log(self, settings: Settings) -> AsyncIterator[PredictionLog]:
        log = PredictionLog(settings.prediction_log)
        print(f"prediction log opened: {log.path}")
        yield log
        log.close()
        print("prediction log closed")


app = App(Resources(), settings=Settings)


@app.after_startup
def check_model(model: FromDishka[IrisModel]) -> None:
    """Refuse to start with a model that gets a textbook setosa wrong."""
    setosa = IrisInput(sepal_length=5.1, sepal_width=3.5, petal_length=1.4, petal_width=0.2)
    if model.predict(setosa).species != "setosa":
        raise RuntimeError("the model does not recognise a setosa")


FLOWERS = [
    IrisInput(sepal_length=5.0, sepal_width=3.4, petal_length=1.5, petal_width=0.2),
    IrisInput(sepal_length=6.1, sepal_width=2.8, petal_length=4.7, petal_width=1.2),
    IrisInput(sepal_length=6.7, sepal_width=3.1, petal_length=5.6, petal_width=2.4),
]


async def main() -> None:
    """Start the app, classify three flowers with its resources, stop it."""
    async with app:
        model = await app.container.get(IrisModel)
        log = await app.container.get(PredictionLog)
        for flower in FLOWERS:
            species = model.predict(flower).species
            log.write(flower, species)
            print(f"{flower.model_dump()} -> {species}")
        report = app.startup_report
        if report is not None:
            print(f"startup: {report.summary()}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    anyio.run(main)
