"""settings=: a pydantic model read from the environment and an env file at startup."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import pytest
from pydantic import BaseModel, field_validator
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


async def test_an_env_file_that_is_a_directory_says_so(tmp_path: Path) -> None:
    """A directory given as env file is named as a directory, not as a missing file."""
    with pytest.raises(StartupError, match=r"is a directory, not a file"):
        async with App(settings=PlainSettings, env_file=tmp_path):
            pytest.fail("the app must not start")


REJECTED = "hunter2-not-for-logs"


class Credentials(BaseModel):
    port: int = 5432
    hosts: list[str] = []


def chain(error: BaseException | None) -> list[BaseException]:
    """The error and every cause and context chained to it."""
    found: list[BaseException] = []
    while error is not None and error not in found:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [("PORT", REJECTED, "port"), ("HOSTS", f"[{REJECTED}", "hosts")],
)
async def test_a_rejected_settings_value_is_never_shown(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    value: str,
    field: str,
) -> None:
    """A value that fails validation is named by its field, never shown: error, causes, log."""
    monkeypatch.setenv(variable, value)
    with caplog.at_level(logging.DEBUG), pytest.raises(StartupError) as caught:
        await App(settings=Credentials).__aenter__()
    assert caught.value.what == "resource Credentials"
    assert field in str(caught.value)
    for error in chain(caught.value):
        assert REJECTED not in str(error)
        assert REJECTED not in repr(error)
        assert REJECTED not in repr(getattr(error, "__dict__", {}))  # e.g. a JSONDecodeError.doc
    assert REJECTED not in "".join(traceback.format_exception(caught.value))
    assert REJECTED not in caplog.text


async def test_a_validator_quoting_the_value_does_not_show_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A field validator whose message quotes the bad value has that value masked."""

    class Access(BaseModel):
        api_key: str = "key_default"

        @field_validator("api_key")
        @classmethod
        def looks_like_a_key(cls, value: str) -> str:
            if not value.startswith("key_"):
                raise ValueError(f"{value} does not start with key_")
            return value

    monkeypatch.setenv("API_KEY", REJECTED)
    with pytest.raises(StartupError) as caught:
        await App(settings=Access).__aenter__()
    assert "api_key: Value error, <hidden> does not start with key_" in str(caught.value)
    assert all(REJECTED not in repr(error) for error in chain(caught.value))


async def test_env_file_is_read_on_top_of_the_classes_own(tmp_path: Path) -> None:
    """App(env_file=...) adds to a BaseSettings class's own env_file; its values win."""
    own = tmp_path / "own.env"
    own.write_text("LAYER_REGION=eu\nLAYER_LEVEL=info\n")
    extra = tmp_path / "extra.env"
    extra.write_text("LAYER_LEVEL=debug\n")

    class Layered(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="LAYER_", env_file=own)

        region: str = "-"
        level: str = "-"

    app = App(settings=Layered, env_file=extra)
    async with app:
        settings = await app.container.get(Layered)
    assert (settings.region, settings.level) == ("eu", "debug")


class Paths(BaseModel):
    path: str = "data"
    home: str = "/srv/app"
    user: str = "guest"
    lc_all: str = "-"
    workers: int = 1


async def test_a_plain_model_never_reads_system_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Fields named like PATH, HOME, USER or LC_* are not read from the process environment."""
    monkeypatch.setenv("HOME", "/root")
    monkeypatch.setenv("USER", "root")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("WORKERS", "3")
    async with App(settings=Paths) as app:
        assert await app.container.get(Paths) == Paths(workers=3)
    env_file = tmp_path / ".env"
    env_file.write_text("PATH=/data/in\nHOME=/srv/other\n")
    async with App(settings=Paths, env_file=env_file) as app:
        settings = await app.container.get(Paths)
    assert (settings.path, settings.home, settings.user) == ("/data/in", "/srv/other", "guest")
