"""``App(settings=SomeSettings)``: the settings class becomes an APP resource read at startup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dishka import Provider, Scope
from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._errors import ConfigurationError

__all__ = ["settings_provider"]


def settings_provider(settings: type[BaseModel], env_file: Path | None) -> Provider:
    """A provider that reads ``settings`` from the environment and ``env_file`` when created.

    A ``pydantic_settings.BaseSettings`` subclass keeps its own configuration (prefix,
    nesting); ``env_file``, when given, is read on top of it. A plain ``BaseModel`` is read
    the same way, field by field, from environment variables of the same name.
    """
    if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
        raise ConfigurationError(
            "App(settings=...)",
            f"expected a pydantic BaseModel or BaseSettings class, got {settings!r}",
        )
    reader = settings if issubclass(settings, BaseSettings) else _as_settings(settings)

    def read() -> Any:
        if env_file is not None and not env_file.is_file():
            raise FileNotFoundError(f"env file {str(env_file)!r} does not exist")
        values = reader(_env_file=env_file) if env_file is not None else reader()
        # A plain model is handed out as itself, not as the reading subclass.
        return values if reader is settings else settings.model_validate(values.model_dump())

    provider = Provider(scope=Scope.APP)
    provider.provide(read, provides=settings)
    return provider


def _as_settings(model: type[BaseModel]) -> type[BaseSettings]:
    return type(
        model.__name__,
        (BaseSettings,),
        {
            "__annotations__": {
                name: field.annotation for name, field in model.model_fields.items()
            },
            **model.model_fields,
            "model_config": SettingsConfigDict(extra="ignore"),
            "__module__": model.__module__,
        },
    )
