"""What the command line relies on in the library: hook options by name, env files, URL options."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from di_lifespan import App, ConfigurationError, FromDishka, StartupError
from di_lifespan._cli_output import CliError
from di_lifespan._cli_target import parse_options
from di_lifespan._supervisor import Supervisor
from di_lifespan.kafka import KafkaBroker


class Settings(BaseModel):
    """Read from the env file."""

    greeting: str = "hello"


def app_with_hooks(seen: list[str]) -> App:
    """An app whose hooks take options (one converted to int) and an injected Settings."""
    app = App(settings=Settings)

    @app.on_startup
    def setup(settings: FromDishka[Settings], env: str = ".env", port: int = 0) -> None:
        seen.append(f"setup env={env} port={port!r} greeting={settings.greeting}")

    @app.on_shutdown
    async def teardown(env: str = ".env", *, verbose: bool = False) -> None:
        seen.append(f"teardown env={env} verbose={verbose}")

    return app


async def test_options_fill_hook_parameters_by_name_converted_to_their_annotation() -> None:
    """Each hook gets the options its parameters name; "8080" becomes 8080, "yes" True."""
    seen: list[str] = []
    app = app_with_hooks(seen)
    options = {"env": ".env.test", "port": "8080", "verbose": "yes", "unused": "x"}
    async with app.lifespan(options=options):
        pass
    assert seen == [
        "setup env=.env.test port=8080 greeting=hello",
        "teardown env=.env.test verbose=True",
    ]


async def test_hooks_keep_their_defaults_without_options() -> None:
    """A run given no options calls the hooks with their own defaults."""
    seen: list[str] = []
    async with app_with_hooks(seen):
        pass
    assert seen == ["setup env=.env port=0 greeting=hello", "teardown env=.env verbose=False"]


async def test_an_option_that_does_not_convert_fails_before_anything_starts() -> None:
    """A value the annotation refuses is a ConfigurationError naming the hook and the option."""
    seen: list[str] = []
    with pytest.raises(ConfigurationError) as caught:
        async with app_with_hooks(seen).lifespan(options={"port": "eighty"}):
            pass
    assert str(caught.value).startswith(
        "on_startup hook app_with_hooks.<locals>.setup: option port='eighty': Input should be"
    )
    assert seen == []


async def test_a_run_env_file_replaces_the_apps_own(tmp_path: Path) -> None:
    """lifespan(env_file=...) is read instead of App(env_file=...), for that run only."""
    own = tmp_path / "own.env"
    own.write_text("GREETING=from own\n")
    chosen = tmp_path / "chosen.env"
    chosen.write_text("GREETING=from chosen\n")
    app = App(settings=Settings, env_file=own)
    async with app.lifespan(env_file=chosen) as running:
        assert (await running.container.get(Settings)).greeting == "from chosen"
    async with app as running:
        assert (await running.container.get(Settings)).greeting == "from own"


async def test_a_run_env_file_needs_a_settings_class(tmp_path: Path) -> None:
    """An env file for an app without settings= is refused: nothing would read it."""
    with pytest.raises(ConfigurationError, match="the app has none"):
        async with App().lifespan(env_file=tmp_path / "x.env"):
            pass


async def test_a_missing_run_env_file_fails_the_start_naming_it(tmp_path: Path) -> None:
    """As with App(env_file=...), a missing file fails the settings resource's start."""
    with pytest.raises(StartupError, match=r"nope\.env"):
        async with App(settings=Settings).lifespan(env_file=tmp_path / "nope.env"):
            pass


def test_kafka_urls_take_idempotence_and_the_session_timeout() -> None:
    """kafka://...?idempotent=false&session_timeout_ms=2000 reaches the KafkaBroker."""
    broker = App(broker="kafka://k1:9092?idempotent=false&session_timeout_ms=2000").broker
    assert isinstance(broker, KafkaBroker)
    assert broker.bootstrap_servers == "k1:9092"
    assert broker._idempotent is False
    assert broker._session_timeout_ms == 2000
    default = App(broker="kafka://k1:9092").broker
    assert isinstance(default, KafkaBroker)
    assert default._idempotent is True


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("acks=1", "unknown kafka:// option 'acks'; known: idempotent, session_timeout_ms"),
        ("idempotent=maybe", "kafka:// option idempotent: expected true or false, got 'maybe'"),
        ("session_timeout_ms=-1", "expected a whole number > 0, got '-1'"),
    ],
)
def test_a_bad_kafka_url_option_is_a_configuration_error(query: str, problem: str) -> None:
    """Unknown options and bad values are refused when the app is made, naming the option."""
    with pytest.raises(ConfigurationError) as caught:
        App(broker=f"kafka://k1:9092?{query}")
    assert caught.value.problem.endswith(problem)


def test_extra_options_are_read_as_python_names() -> None:
    """--name value, --name=value and a bare --flag; dashes become underscores."""
    arguments = ["--model-path", "/m", "--port=80", "--dry-run", "--offset", "-1", "--fast"]
    assert parse_options(arguments) == {
        "model_path": "/m",
        "port": "80",
        "dry_run": True,
        "offset": "-1",
        "fast": True,
    }


def test_a_stray_argument_is_a_usage_error() -> None:
    """An argument that is not an option says how extra options are written."""
    with pytest.raises(CliError, match="give extra options as --name value") as caught:
        parse_options(["--region", "eu", "us"])
    assert caught.value.code == 2


def test_a_worker_that_exits_with_status_2_stops_them_all() -> None:
    """A usage error in a worker would recur at every restart: the supervisor exits with 2."""
    said: list[str] = []
    worker = [sys.executable, "-c", "import sys; sys.exit(2)"]
    assert Supervisor(worker, 2, say=said.append).run() == 2
    assert "it cannot start as configured: stopping" in said
    assert not any("again" in line for line in said)
