"""settings=: a pydantic model read from the environment and an env file at startup."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict

from di_lifespan import App, FromDishka, StartupError


class PlainSettings(BaseModel):
    model_path: str = "default.bin"
    workers: int = 1


class PrefixedSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IRIS_")

    model_path: str


async def test_a_plain_model_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain BaseModel's fields come from environment variables of the same name."""
    monkeypatch.setenv("WORKERS", "4")
    app = App(settings=PlainSettings)
    async with app:
        settings = await app.container.get(PlainSettings)
    assert type(settings) is PlainSettings
    assert settings == PlainSettings(model_path="default.bin", workers=4)


async def test_base_settings_keep_their_own_config_and_read_the_env_file(tmp_path: Path) -> None:
    """A BaseSettings subclass keeps its prefix; env_file values are read."""
    env_file = tmp_path / "prod.env"
    env_file.write_text("IRIS_MODEL_PATH=/models/iris.bin\n")
    app = App(settings=PrefixedSettings, env_file=env_file)
    seen: list[str] = []

    @app.after_startup
    def show(settings: FromDishka[PrefixedSettings]) -> None:
        seen.append(settings.model_path)

    async with app:
        pass
    assert seen == ["/models/iris.bin"]


async def test_invalid_settings_fail_the_start_naming_the_field(tmp_path: Path) -> None:
    """A value that does not validate fails the start naming the settings and the field."""
    env_file = tmp_path / ".env"
    env_file.write_text("WORKERS=many\n")
    with pytest.raises(StartupError) as caught:
        await App(settings=PlainSettings, env_file=env_file).__aenter__()
    assert caught.value.what == "resource PlainSettings"
    assert "workers" in str(caught.value)


async def test_a_missing_env_file_fails_the_start_naming_it(tmp_path: Path) -> None:
    """An env file that does not exist is an error naming the file, not silently skipped."""
    missing = tmp_path / "nope.env"
    with pytest.raises(StartupError, match=r"nope\.env"):
        await App(settings=PlainSettings, env_file=missing).__aenter__()
