"""An app the CLI tests run with ``di-lifespan run tests.apps.cli_service:app``; it prints.

Its topics are named by the environment (``CLI_ORDERS``, default ``orders``; invoices go to
``<orders>.invoices``), so that each test can have its own on a shared broker.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

from pydantic import BaseModel, PositiveInt

from di_lifespan import App, FromDishka, Message, Provider, Scope, provide

ORDERS = os.environ.get("CLI_ORDERS", "orders")


class Settings(BaseModel):
    """Read from the environment and the env file."""

    greeting: str = "hello"


class Model:
    """A resource that takes a while to load, in real life."""


class Cache:
    """A resource built from the model."""


class Resources(Provider):
    @provide(scope=Scope.APP)
    async def model(self, settings: Settings) -> AsyncIterator[Model]:
        print(f"model loaded ({settings.greeting})", flush=True)
        yield Model()
        print("model closed", flush=True)

    @provide(scope=Scope.APP)
    def cache(self, model: Model) -> Iterator[Cache]:
        print("cache ready", flush=True)
        yield Cache()
        print("cache cleared", flush=True)


app = App(Resources(), settings=Settings, graceful_timeout=5)


class Order(BaseModel):
    """An incoming order."""

    item: str
    quantity: PositiveInt


class Invoice(BaseModel):
    """What billing an order publishes."""

    item: str
    total: float


@app.on_startup
async def setup(
    settings: FromDishka[Settings], env: str = ".env", region: str = "eu", port: int = 0
) -> None:
    print(f"setup env={env} region={region} port={port!r} greeting={settings.greeting}", flush=True)


@app.subscriber(ORDERS, group=f"{ORDERS}.billing")
@app.publisher(f"{ORDERS}.invoices")
async def bill(order: Order, cache: FromDishka[Cache], message: Message) -> Invoice:
    print(f"billed {order.item} on partition {message.partition} by {os.getpid()}", flush=True)
    return Invoice(item=order.item, total=order.quantity * 1.5)


@app.after_startup
def ready() -> None:
    print("ready", flush=True)
