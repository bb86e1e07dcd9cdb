"""The db_pool demo: ``python -m examples.db_pool``.

Uses the PostgreSQL that ``DB_POOL_DSN`` names, or starts a throwaway one (see
``examples.db_pool.postgres``). Stocks three apples, places an order of two (committed) and
one of five (short stock: rolled back, retried, dead-lettered and recorded as rejected),
prints the tables, and stops: the handlers finish, then the pool closes.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack

import anyio
import asyncpg

from examples.db_pool.app import Order, app
from examples.db_pool.postgres import throwaway_postgres


async def main() -> None:
    """Run the service, place two orders, show what was committed and what was rejected."""
    async with app:
        pool = await app.container.get(asyncpg.Pool)
        await pool.execute(
            "INSERT INTO stock VALUES ('apple', 3)"
            " ON CONFLICT (item) DO UPDATE SET quantity = excluded.quantity"
        )
        await app.publish("orders", Order(id="order-1", item="apple", quantity=2))
        await app.publish("orders", Order(id="order-2", item="apple", quantity=5))
        with anyio.fail_after(30):
            # The second order is retried, then dead-lettered, then recorded: wait for that.
            while not await pool.fetchval("SELECT count(*) FROM rejections"):  # noqa: ASYNC110  # a database has no event to wait on
                await anyio.sleep(0.05)
        for row in await pool.fetch("SELECT id, item, quantity FROM orders ORDER BY id"):
            print(f"order {row['id']}: {row['quantity']} {row['item']}")
        stock = await pool.fetchval("SELECT quantity FROM stock WHERE item = 'apple'")
        print(f"apples left: {stock}")
        for row in await pool.fetch("SELECT id, reason FROM rejections ORDER BY id"):
            print(f"rejected {row['id']}: {row['reason']}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with ExitStack() as stack:
        if not os.environ.get("DB_POOL_DSN"):
            os.environ["DB_POOL_DSN"] = stack.enter_context(throwaway_postgres())
        anyio.run(main)
