"""An app run with app.run() in a child process by test_run.py; it prints what happens.

Usage: python -m tests.apps.signalled [ok|hang|broken]
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import anyio

from di_lifespan import App, Provider, Scope, provide


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
        yield Pool()
        print("finalizer started", flush=True)
        if self.mode == "hang":
            await anyio.sleep_forever()
        print("finalizer done", flush=True)


def main() -> None:
    """Build the app for the mode given on the command line and run it until signalled."""
    mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
    app = App(Resources(mode), shutdown_timeout=120)

    @app.after_startup
    def ready() -> None:
        print("ready", flush=True)

    app.run()


if __name__ == "__main__":
    main()
