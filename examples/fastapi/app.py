"""The iris model served over HTTP and over Kafka by one process, from one container.

The model is fitted once, at startup, by an APP generator provider; FastAPI routes and Kafka
handlers both get it (and the ``Predictions`` store) injected. ``FastAPI(lifespan=
app.asgi_lifespan)`` makes the ASGI server's startup and shutdown those of the app, and
``setup_dishka(app, api)`` gives each HTTP request a REQUEST scope of the app's container,
where dishka's ``DishkaRoute`` finds it.

- ``POST /predict``: classify the flower in the request, now;
- ``POST /flowers/{key}``: publish the flower to ``input_data`` (202 Accepted); the Kafka
  handler classifies it and publishes the prediction to ``predictions``;
- ``GET /flowers/{key}``: the prediction the Kafka side made (404 until it has);
- ``GET /stats``: how many predictions each side made.

The broker is ``DI_LIFESPAN_BROKER`` (``memory://`` by default; ``embedded://`` starts a
local Kafka-protocol broker).
"""

# No `from __future__ import annotations` here: dishka's inject keeps a route's return
# annotation as written, and FastAPI cannot resolve a string one from dishka's wrapper
# (reagento/dishka#369).

import logging
from collections.abc import AsyncIterator

import anyio
from dishka.integrations.fastapi import DishkaRoute
from fastapi import APIRouter, FastAPI, HTTPException

from di_lifespan import App, FromDishka, Message, Provider, Publisher, Scope, provide
from di_lifespan.fastapi import setup_dishka
from examples.iris.model import IrisInput, IrisModel, IrisPrediction

logger = logging.getLogger("examples.fastapi")


class Predictions:
    """What each side predicted: the Kafka side's by flower key, and the counts."""

    def __init__(self) -> None:
        self.by_key: dict[str, str] = {}
        self.counts = {"http": 0, "kafka": 0}


class Resources(Provider):
    """The model and the predictions store, each created once for HTTP and Kafka alike."""

    @provide(scope=Scope.APP)
    async def model(self) -> AsyncIterator[IrisModel]:
        model = await anyio.to_thread.run_sync(IrisModel.fit)
        logger.info("model loaded")
        yield model
        logger.info("model cleared")

    predictions = provide(Predictions, scope=Scope.APP)


app = App(Resources())


@app.subscriber("input_data", group="iris")
@app.publisher("predictions")
async def predict_from_kafka(
    flower: IrisInput, message: Message, model: FromDishka[IrisModel], seen: FromDishka[Predictions]
) -> IrisPrediction:
    """Classify a flower from the topic; the prediction is published to "predictions"."""
    prediction = model.predict(flower)
    seen.by_key[(message.key or b"").decode()] = prediction.species
    seen.counts["kafka"] += 1
    return prediction


router = APIRouter(route_class=DishkaRoute)


@router.post("/predict")
async def predict_now(
    flower: IrisInput, model: FromDishka[IrisModel], seen: FromDishka[Predictions]
) -> IrisPrediction:
    """Classify the flower in the request."""
    seen.counts["http"] += 1
    return model.predict(flower)


@router.post("/flowers/{key}", status_code=202)
async def submit(key: str, flower: IrisInput, publisher: FromDishka[Publisher]) -> dict[str, str]:
    """Send the flower to the Kafka side."""
    await publisher.publish("input_data", flower, key=key)
    return {"submitted": key}


@router.get("/flowers/{key}")
async def prediction_of(key: str, seen: FromDishka[Predictions]) -> IrisPrediction:
    """The Kafka side's prediction for the flower ``key``."""
    if key not in seen.by_key:
        raise HTTPException(404, f"no prediction for {key!r} yet")
    return IrisPrediction(species=seen.by_key[key])


@router.get("/stats")
async def stats(seen: FromDishka[Predictions]) -> dict[str, int]:
    """How many predictions each side made."""
    return seen.counts


api = FastAPI(title="iris", lifespan=app.asgi_lifespan)
api.include_router(router)
setup_dishka(app, api)
