"""A Kafka service run with app.run() in a child process by tests/reliability/.

Usage: python -m tests.apps.kafka_service BOOTSTRAP INPUT OUTPUT GROUP

It reads ``{"id": int}`` bodies from INPUT in consumer group GROUP and publishes ``{"id": id}``
to OUTPUT, with the input's key and an ``x-worker`` header naming this process. The
environment tunes it: ``HANDLER_DELAY`` (seconds each message takes, default 0),
``MAX_CONCURRENCY`` (default 1), ``WORKER`` (the header's value, default the process id).
It prints ``ready`` once it is ready.
"""

from __future__ import annotations

import os
import sys

import anyio
from pydantic import BaseModel

from di_lifespan import App, Message, Outgoing
from di_lifespan.kafka import KafkaBroker


class Item(BaseModel):
    """An input body."""

    id: int


def main() -> None:
    """Build the service from the command line and the environment; run it until signalled."""
    bootstrap, source, target, group = sys.argv[1:5]
    delay = float(os.environ.get("HANDLER_DELAY", "0"))
    worker = os.environ.get("WORKER", str(os.getpid()))
    app = App(
        broker=KafkaBroker(bootstrap, idempotent=False, session_timeout_ms=2000),
        graceful_timeout=10,
    )

    @app.subscriber(
        source, group=group, max_concurrency=int(os.environ.get("MAX_CONCURRENCY", "1"))
    )
    @app.publisher(target)
    async def relay(item: Item, message: Message) -> Outgoing:
        if delay:
            await anyio.sleep(delay)
        return Outgoing({"id": item.id}, key=message.key, headers={"x-worker": worker})

    @app.after_startup
    def ready() -> None:
        print("ready", flush=True)

    app.run()


if __name__ == "__main__":
    main()
