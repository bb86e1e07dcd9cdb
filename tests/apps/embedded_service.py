"""An app on ``embedded://`` run with app.run(); test_embedded.py signals its process group.

Usage: python -m tests.apps.embedded_service
"""

from __future__ import annotations

from di_lifespan import App

app = App(broker="embedded://")


@app.subscriber("orders", group="billing")
async def bill(order: dict[str, int]) -> None:
    """Nothing to do: the test is about stopping."""


@app.after_startup
def ready() -> None:
    print("ready", flush=True)


if __name__ == "__main__":
    app.run()
