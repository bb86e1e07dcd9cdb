"""Orders written to PostgreSQL: a pool for the app's life, a transaction for each message.

``pool`` is an APP resource: opened (and the schema made) at startup, closed at exit, after
the handlers have stopped. ``transaction`` is a REQUEST resource: each message's handler gets
a connection of the pool inside a transaction of its own, which commits when the handler
returns and rolls back when it raises (dishka hands the generator the exception that ended
the scope, as the value of its ``yield``). The failed message is retried, each attempt in a
new transaction, then dead-lettered; ``record_rejection`` stores it, in its own transaction.

Settings come from ``DB_POOL_*`` environment variables: ``DB_POOL_DSN`` names the database.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator

import asyncpg
from pydantic import BaseModel, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict

from di_lifespan import App, FromDishka, Message, Provider, Retry, Scope, provide

logger = logging.getLogger("examples.db_pool")

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    item text PRIMARY KEY,
    quantity integer NOT NULL CHECK (quantity >= 0)
);
CREATE TABLE IF NOT EXISTS orders (
    id text PRIMARY KEY,
    item text NOT NULL,
    quantity integer NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (id text PRIMARY KEY, reason text NOT NULL);
"""


class Settings(BaseSettings):
    """The database and the pool's size, from DB_POOL_* variables."""

    model_config = SettingsConfigDict(env_prefix="DB_POOL_")

    dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    min_size: int = 1
    max_size: int = 10


class Order(BaseModel):
    """One order: take ``quantity`` of ``item`` from the stock."""

    id: str
    item: str
    quantity: PositiveInt


class Database(Provider):
    """The pool (APP) and the per-message transaction (REQUEST)."""

    @provide(scope=Scope.APP)
    async def pool(self, settings: Settings) -> AsyncIterator[asyncpg.Pool]:
        pool = await asyncpg.create_pool(
            settings.dsn, min_size=settings.min_size, max_size=settings.max_size
        )
        try:
            await pool.execute(SCHEMA)
            logger.info("pool open (%d to %d connections)", settings.min_size, settings.max_size)
            yield pool
        finally:
            await pool.close()  # waits for the connections handlers still hold
            logger.info("pool closed")

    @provide(scope=Scope.REQUEST)
    async def transaction(
        self, pool: asyncpg.Pool
    ) -> AsyncGenerator[asyncpg.Connection, BaseException | None]:
        async with pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            error = yield connection  # the exception that ended the handler, or None
            if error is None:
                await transaction.commit()
            else:
                await transaction.rollback()
                logger.info("rolled back: %s", type(error).__name__)


app = App(Database(), settings=Settings)


@app.subscriber("orders", group="orders", retry=Retry(attempts=2, backoff=0.05))
async def place_order(order: Order, db: FromDishka[asyncpg.Connection]) -> None:
    """Record the order, then take it from the stock; short stock undoes both."""
    await db.execute(
        "INSERT INTO orders (id, item, quantity) VALUES ($1, $2, $3)",
        order.id,
        order.item,
        order.quantity,
    )
    # The CHECK constraint refuses a negative stock: the order row above is rolled back too.
    left = await db.fetchval(
        "UPDATE stock SET quantity = quantity - $2 WHERE item = $1 RETURNING quantity",
        order.item,
        order.quantity,
    )
    if left is None:
        raise LookupError(f"no stock of {order.item!r}")


@app.subscriber("orders.dlq", group="rejections", dead_letter=None)
async def record_rejection(
    order: Order, message: Message, db: FromDishka[asyncpg.Connection]
) -> None:
    """Keep each order that could not be placed, with the reason, for the operator."""
    error = (message.header("x-error") or "").partition("\n")[0]  # its first line says enough
    reason = f"{message.header('x-error-type')}: {error}"
    await db.execute(
        "INSERT INTO rejections (id, reason) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        order.id,
        reason,
    )
