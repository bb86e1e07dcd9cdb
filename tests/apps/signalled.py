"""An app run with app.run() in a child process by test_run.py; it prints what happens.

Usage: python -m tests.apps.signalled [ok|hang|broken|crash|busy|slow-start|bad-finalizer]
[--debug]
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator

import anyio

from di_lifespan import App, MemoryBroker, Provider, Scope, provide
from tests.resources import Refusing


class Pool:
    """A resource whose finalizer prints, or hangs when asked to."""


class Resources(Provider):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    @provide(scope=Scope.APP)
    async def pool(self) -> AsyncIterator[Pool]:
        if self.mode == "broken":
            raise ConnectionRefusedError("db:5432")
        if self.mode == "slow-start":
            print("starting", flush=True)
            await anyio.sleep_forever()  # a signal comes before it is ready
        yield Pool()
        print("finalizer started", flush=True)
        if self.mode == "hang":
            await anyio.sleep_forever()
        if self.mode == "bad-finalizer":
            raise RuntimeError("pool did not close cleanly")
        print("finalizer done", flush=True)


def main() -> None:
    """Build the app for the mode given on the command line and run it until signalled."""
    mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
    if "--debug" in sys.argv:
        logging.basicConfig(level=logging.DEBUG)
    # In "crash" mode a failed message cannot be put aside: its subscriber stops the app.
    broker = Refusing(MemoryBroker(), {"jobs.dlq"}) if mode == "crash" else None
    app = App(Resources(mode), broker=broker, shutdown_timeout=120)

    @app.subscriber("jobs", group="workers", retry=None)
    async def work(body: bytes) -> None:
        if mode == "busy":
            print("handler started", flush=True)
            await anyio.sleep(0.3)  # still in hand when the signal comes
            print("handler done", flush=True)
            return
        raise RuntimeError(f"cannot do {body.decode()}")

    @app.after_startup
    async def ready() -> None:
        print("ready", flush=True)
        if mode in ("crash", "busy"):
            await app.publish("jobs", b"job 1")

    app.run()


if __name__ == "__main__":
    main()
