"""A greeter whose settings come from ``.env``, or the env file chosen at start.

``Settings`` is a pydantic-settings class given as ``App(settings=...)``: the app reads it
when it starts, from ``GREETER_*`` environment variables layered over the env file
(``create_app(env_file)``; ``.env`` beside this module by default), and injects it like any
resource. Around the resources run hooks of each kind, sync and async, in this order:

1. ``on_startup`` hooks, in registration order (before the resources they do not ask for);
2. the resources, all of them, eagerly;
3. ``after_startup`` hooks, in registration order: delivery begins only after the last;
4. at shutdown, ``on_shutdown`` hooks in reverse order, then delivery stops;
5. ``after_shutdown`` hooks in reverse order, then the finalizers in reverse order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from di_lifespan import App, FromDishka, Provider, Publisher, Scope, provide

HERE = Path(__file__).resolve().parent
logger = logging.getLogger("examples.settings")


class Settings(BaseSettings):
    """The greeter's settings: GREETER_* variables, over the env file the app is given."""

    model_config = SettingsConfigDict(env_prefix="GREETER_")

    environment: str
    greeting: str = "Hello"
    shout: bool = False


class Greeter:
    """Greets people the way the settings say."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.greeted = 0

    def greet(self, name: str) -> str:
        self.greeted += 1
        text = f"{self.settings.greeting}, {name}!"
        return text.upper() if self.settings.shout else text


class Resources(Provider):
    """One resource that needs the settings."""

    @provide(scope=Scope.APP)
    async def greeter(self, settings: Settings) -> AsyncIterator[Greeter]:
        greeter = Greeter(settings)
        print(f"resource: greeter ready ({settings.environment})")
        yield greeter
        print(f"resource: greeter closed after {greeter.greeted} greetings")


# --- the hooks: plain functions, sync or async, that may ask for resources ---------------------


async def show_settings(settings: FromDishka[Settings], env: str = ".env") -> None:
    """on_startup: say which settings the app runs with.

    ``env`` is the Propan-style parameter that ``di-lifespan run --env FILE`` fills with
    FILE; the settings themselves were read from the env file the app was given.
    """
    logger.debug("env option: %s", env)
    print(f"on_startup 1: {settings.environment} settings, greeting {settings.greeting!r}")


def refuse_shouting_in_production(settings: FromDishka[Settings]) -> None:
    """on_startup: a settings check that stops the start with one clear line."""
    if settings.shout and settings.environment == "production":
        raise ValueError("GREETER_SHOUT is for tests only")
    print("on_startup 2: settings checked")


def warm_up(greeter: FromDishka[Greeter]) -> None:
    """after_startup: every resource is ready; use one before the first message."""
    greeter.greet("warm-up")
    print("after_startup 1: greeter warmed up")


async def announce(publisher: FromDishka[Publisher], settings: FromDishka[Settings]) -> None:
    """after_startup: the last step before delivery begins; it may publish."""
    await publisher.publish("events", {"event": "started", "environment": settings.environment})
    print("after_startup 2: started event published")


def stop_accepting() -> None:
    """on_shutdown (registered first, runs last of its kind): the first step of the stop."""
    print("on_shutdown 1: no new work")


async def flush_metrics(greeter: FromDishka[Greeter]) -> None:
    """on_shutdown (registered second, runs first): handlers are still running."""
    print(f"on_shutdown 2: {greeter.greeted} greetings so far")


async def report(greeter: FromDishka[Greeter]) -> None:
    """after_shutdown: handlers and the broker have stopped; resources are still open."""
    print(f"after_shutdown 1: {greeter.greeted} greetings in all")


def say_goodbye() -> None:
    """after_shutdown (registered second, runs first)."""
    print("after_shutdown 2: goodbye")


def create_app(env_file: str | Path = HERE / ".env") -> App:
    """The greeter service, reading its settings from ``env_file``."""
    app = App(Resources(), settings=Settings, env_file=env_file)
    app.on_startup(show_settings)
    app.on_startup(refuse_shouting_in_production)
    app.after_startup(warm_up)
    app.after_startup(announce)
    app.on_shutdown(stop_accepting)
    app.on_shutdown(flush_metrics)
    app.after_shutdown(report)
    app.after_shutdown(say_goodbye)

    @app.subscriber("names", group="greeter")
    @app.publisher("greetings")
    async def greet(name: str, greeter: FromDishka[Greeter]) -> str:
        """Greet each name; the greeting is published to "greetings"."""
        return greeter.greet(name)

    return app


app = create_app()
