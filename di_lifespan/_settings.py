"""``App(settings=SomeSettings)``: the settings class becomes an APP resource read at startup.

A settings value may be a credential, so a value that does not validate is never shown: the
error names the field and what is wrong with it, and chains no cause that holds the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dishka import Provider, Scope
from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from ._errors import ConfigurationError

__all__ = ["SYSTEM_VARIABLES", "settings_provider"]

# Set for every process by the system, the login or the shell, never for one service: a plain
# model's field of the same name (``path``, ``home``, ``user``) is not read from them.
SYSTEM_VARIABLES = frozenset(
    {
        "_",
        "COLUMNS",
        "DISPLAY",
        "EDITOR",
        "HOME",
        "HOST",
        "HOSTNAME",
        "LANG",
        "LANGUAGE",
        "LINES",
        "LOGNAME",
        "MAIL",
        "OLDPWD",
        "PAGER",
        "PATH",
        "PS1",
        "PWD",
        "PYTHONHOME",
        "PYTHONPATH",
        "SHELL",
        "SHLVL",
        "TEMP",
        "TERM",
        "TMP",
        "TMPDIR",
        "TZ",
        "USER",
        "USERNAME",
        "VIRTUAL_ENV",
        "VISUAL",
        # Windows
        "APPDATA",
        "COMPUTERNAME",
        "COMSPEC",
        "HOMEDRIVE",
        "HOMEPATH",
        "LOCALAPPDATA",
        "OS",
        "PATHEXT",
        "PROGRAMFILES",
        "SYSTEMROOT",
        "USERPROFILE",
        "WINDIR",
    }
)
_SYSTEM_PREFIXES = ("LC_", "XDG_")
_SHORTEST_MASKED = 3  # shorter inputs are too likely to occur in a message by chance


def settings_provider(settings: type[BaseModel], env_file: Path | None) -> Provider:
    """A provider that reads ``settings`` from the environment and ``env_file`` when created.

    A ``pydantic_settings.BaseSettings`` subclass keeps its own configuration (prefix,
    nesting, its own env files); ``env_file``, when given, is read on top of it. A plain
    ``BaseModel`` is read field by field from environment variables of the same name, except
    ``SYSTEM_VARIABLES``, and from ``env_file``.
    """
    _check_class(settings)
    reader = settings if issubclass(settings, BaseSettings) else _as_settings(settings)

    def read() -> Any:
        if env_file is not None and not env_file.is_file():
            problem = "is a directory, not a file" if env_file.is_dir() else "does not exist"
            raise FileNotFoundError(f"env file {str(env_file)!r} {problem}")
        return _read(settings, reader, env_file)

    provider = Provider(scope=Scope.APP)
    provider.provide(read, provides=settings)
    return provider


def _check_class(settings: object) -> None:
    where = "App(settings=...)"
    if isinstance(settings, BaseModel):
        name = type(settings).__name__
        # Never its repr: the instance holds the values, which may be credentials.
        raise ConfigurationError(
            where,
            f"got an instance of {name}; pass the class itself, settings={name}, and it is"
            f" read from the environment at startup (to give ready-made values instead, use"
            f" context={{{name}: ...}} without settings=)",
        )
    if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
        shown = settings if isinstance(settings, type) else type(settings).__name__ + " object"
        raise ConfigurationError(
            where,
            f"expected a pydantic BaseModel or BaseSettings class, got {shown!s}",
        )


def _read(
    settings: type[BaseModel], reader: type[BaseSettings], env_file: Path | None
) -> BaseModel:
    try:
        values = reader(**_env_files(reader, env_file))
        # A plain model is handed out as itself, not as the reading subclass.
        return values if reader is settings else settings.model_validate(values.model_dump())
    except ValidationError as error:
        problem = _invalid_fields(error)
    except SettingsError as error:
        # Its cause (a JSON error) holds the raw value; its own text names the field only.
        problem = str(error)
    # Raised outside the except clauses, so that the original is not even its __context__.
    raise ConfigurationError(f"settings {settings.__name__}", problem)


def _invalid_fields(error: ValidationError) -> str:
    """Each wrong field and what is wrong, without the value it was given."""
    parts = []
    for item in error.errors(include_url=False, include_input=True):
        field = ".".join(str(part) for part in item["loc"]) or "(value)"
        message = item["msg"]
        value = item.get("input")
        if isinstance(value, str) and len(value) >= _SHORTEST_MASKED:
            message = message.replace(value, "<hidden>")  # a validator that quotes the value
        shown = "" if item["type"] == "missing" else " (the value is not shown)"
        parts.append(f"{field}: {message}{shown}")
    return "; ".join(parts)


def _env_files(reader: type[BaseSettings], env_file: Path | None) -> dict[str, Any]:
    """The ``_env_file`` argument: the class's own env files, then ours, which wins."""
    if env_file is None:
        return {}
    own = reader.model_config.get("env_file")
    if own is None:
        files: tuple[Any, ...] = ()
    elif isinstance(own, str | os.PathLike):
        files = (own,)
    else:
        files = tuple(own)
    return {"_env_file": (*files, env_file)}


class EnvironmentVariables(EnvSettingsSource):
    """The process environment minus the variables the system sets for every process."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.env_vars = _without_system(self.env_vars)


def _without_system(variables: Mapping[str, str | None]) -> dict[str, str | None]:
    return {
        name: value
        for name, value in variables.items()
        if name.upper() not in SYSTEM_VARIABLES and not name.upper().startswith(_SYSTEM_PREFIXES)
    }


class _PlainModelSettings(BaseSettings):
    """The base of the reader made for a plain model: the same sources but the filtered env."""

    model_config = SettingsConfigDict(extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            EnvironmentVariables(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )


def _as_settings(model: type[BaseModel]) -> type[BaseSettings]:
    return type(
        model.__name__,
        (_PlainModelSettings,),
        {
            "__annotations__": {
                name: field.annotation for name, field in model.model_fields.items()
            },
            **model.model_fields,
            "__module__": model.__module__,
        },
    )
