"""di_lifespan: Kafka message services whose resources live in a dishka container.

Resources are plain dishka providers; the app creates every APP-scoped one at startup,
concurrently and each within a time limit, and finalizes them in reverse order at exit.
"""

from dishka import FromDishka, Provider, Scope, from_context, provide

from ._app import App, AppState
from ._errors import (
    ConfigurationError,
    DependencyError,
    DiLifespanError,
    GraphError,
    LifespanStateError,
    ShutdownError,
    ShutdownStepError,
    ShutdownTimeoutError,
    StartupError,
    StartupTimeoutError,
)
from ._report import Outcome, ResourceStart, StartupReport

__all__ = [
    "App",
    "AppState",
    "ConfigurationError",
    "DependencyError",
    "DiLifespanError",
    "FromDishka",
    "GraphError",
    "LifespanStateError",
    "Outcome",
    "Provider",
    "ResourceStart",
    "Scope",
    "ShutdownError",
    "ShutdownStepError",
    "ShutdownTimeoutError",
    "StartupError",
    "StartupReport",
    "StartupTimeoutError",
    "from_context",
    "provide",
]
