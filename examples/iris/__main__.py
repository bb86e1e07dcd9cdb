"""The iris demo: ``python -m examples.iris`` (what ``make demo`` runs).

Starts the service (the startup report shows the model fitted in a worker thread while the
prediction log opens), publishes three flowers and one invalid message, lets the handlers
classify and audit them, prints what reached each topic, and stops: in-flight work finishes,
offsets are committed, and the resources are finalized in reverse order.
"""

from __future__ import annotations

import logging

import anyio

from examples.iris.app import DeadLetters, PredictionLog, app
from examples.iris.model import IrisInput

FLOWERS = {
    "flower-1": IrisInput(sepal_length=5.0, sepal_width=3.4, petal_length=1.5, petal_width=0.2),
    "flower-2": IrisInput(sepal_length=6.1, sepal_width=2.8, petal_length=4.7, petal_width=1.2),
    "flower-3": IrisInput(sepal_length=6.7, sepal_width=3.1, petal_length=5.6, petal_width=2.4),
}


async def main() -> None:
    """Run the service, feed it flowers and one bad message, show where everything went."""
    async with app:
        log = await app.container.get(PredictionLog)
        inbox = await app.container.get(DeadLetters)
        for key, flower in FLOWERS.items():
            await app.publish("input_data", flower, key=key)
        await app.publish("input_data", {"sepal_length": -1}, key="flower-4")
        with anyio.fail_after(60):
            await log.wait_for(len(FLOWERS))
            await inbox.wait_for(1)
        print(f"audited: {log.path.read_text().splitlines()[-len(FLOWERS) :]}")
        for line in inbox.lines:
            print(line)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # its group-join chatter
    anyio.run(main)
