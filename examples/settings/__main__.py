"""The settings demo: ``python -m examples.settings [--env FILE]``.

Starts the greeter with the settings of FILE (``.env`` beside the example by default; a
relative FILE not found from the current directory is looked up beside the example too),
greets two people, and stops, each hook printing a line as it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio

from examples.settings.app import HERE, create_app

NAMES = ("Ada", "Grace")


def env_file(name: str) -> Path:
    """FILE as given, or beside the example when it is not found from here."""
    path = Path(name)
    return path if path.is_file() or path.is_absolute() else HERE / path


async def main(env: Path) -> None:
    """Run the greeter, greet two people through its topics, print the greetings, stop."""
    app = create_app(env)
    greeted = anyio.Event()
    greetings: list[str] = []

    @app.subscriber("greetings", group="demo")
    async def show(greeting: str) -> None:
        greetings.append(greeting)
        if len(greetings) == len(NAMES):
            greeted.set()

    async with app:
        for name in NAMES:
            await app.publish("names", name)
        with anyio.fail_after(30):
            await greeted.wait()
        for greeting in greetings:
            print(f"greeting: {greeting}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m examples.settings")
    parser.add_argument("--env", default=".env", help="the env file to read (default: .env)")
    anyio.run(main, env_file(parser.parse_args().env))
