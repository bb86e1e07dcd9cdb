"""The test in DESIGN.md's API example, written the way a user writes it, passes unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import BaseModel, NonNegativeFloat

from di_lifespan import App, FromDishka, Message, Provider, Scope, provide
from di_lifespan.testing import TestClient


class Settings(BaseModel):
    model_path: str = "/models/iris.bin"


class IrisInput(BaseModel):
    sepal_length: NonNegativeFloat
    sepal_width: NonNegativeFloat
    petal_length: NonNegativeFloat
    petal_width: NonNegativeFloat


class IrisPrediction(BaseModel):
    species: str


class Model:
    def __init__(self, path: str) -> None:
        self.path = path

    def predict(self, data: IrisInput) -> str:
        raise RuntimeError("the real model is never loaded in this test")

    def close(self) -> None:
        """Release the weights."""


async def load(path: str) -> Model:
    raise FileNotFoundError(path)  # there are no weights on a test machine


class Resources(Provider):
    @provide(scope=Scope.APP)
    async def model(self, settings: Settings) -> AsyncIterator[Model]:
        model = await load(settings.model_path)
        yield model
        model.close()


app = App(Resources(), settings=Settings)


@app.subscriber("input_data", group="iris")
@app.publisher("predictions")
async def predict(data: IrisInput, model: FromDishka[Model], msg: Message) -> IrisPrediction:
    return IrisPrediction(species=model.predict(data))


class FakeModel(Model):
    def predict(self, data: IrisInput) -> str:
        return "setosa"


class FakeResources(Provider):
    @provide(scope=Scope.APP)
    def model(self) -> Model:
        return FakeModel("fake")


async def test_predict() -> None:
    """DESIGN.md's test: the whole app with a fake model, one publish, one prediction."""
    async with TestClient(app, overrides=[FakeResources()]) as client:
        await client.publish(
            "input_data",
            {"sepal_length": 1.0, "sepal_width": 1.0, "petal_length": 1.0, "petal_width": 1.0},
        )
        assert client.published("predictions") == [{"species": "setosa"}]
