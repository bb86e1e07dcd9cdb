"""The examples run end to end as the README and docs/examples.md say."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from di_lifespan.testing import TestClient, override

ROOT = Path(__file__).resolve().parent.parent


# --- examples/iris ---------------------------------------------------------------------------


def test_the_iris_demo_classifies_audits_and_cleans_up(tmp_path: Path) -> None:
    """The iris demo classifies three flowers on embedded://, dead-letters one, and stops."""
    log = tmp_path / "predictions.log"
    result = subprocess.run(
        [sys.executable, "-m", "examples.iris"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "IRIS_PREDICTION_LOG": str(log), "DI_LIFESPAN_BROKER": ""},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # On Kafka the flowers' keys spread them over partitions: the audit order may vary.
    (audited,) = [line for line in lines if line.startswith("audited: ")]
    assert sorted(ast.literal_eval(audited.removeprefix("audited: "))) == [
        "flower-1 -> setosa",
        "flower-2 -> versicolor",
        "flower-3 -> virginica",
    ]
    assert any(
        line.startswith("dead letter {'sepal_length': -1} (ValidationError)") for line in lines
    )
    logged = result.stderr.splitlines()
    loaded = logged.index(
        "INFO examples.iris: model loaded: logistic regression over setosa, versicolor, virginica"
    )
    ready = next(n for n, line in enumerate(logged) if "startup report: 4 of 4" in line)
    assert loaded < ready
    assert ", broker embedded://" in logged[ready]  # the demo runs on a Kafka-protocol broker
    # The model finished starting last, so it is finalized first.
    assert logged[-2:] == [
        "INFO examples.iris: model cleared",
        "INFO examples.iris: prediction log closed after 3 lines",
    ]
    assert sorted(log.read_text().splitlines()) == [
        "flower-1 -> setosa",
        "flower-2 -> versicolor",
        "flower-3 -> virginica",
    ]


@pytest.mark.timeout(180)
def test_make_demo_drives_the_iris_service_through_the_command_line(tmp_path: Path) -> None:
    """The demo's commands: broker, run, consume, publish, SIGTERM; predictions, orderly stop."""
    result = subprocess.run(
        [sys.executable, "-m", "examples.iris.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        env={**os.environ, "IRIS_PREDICTION_LOG": str(tmp_path / "predictions.log")},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    commands = [line.split()[2] for line in lines if line.startswith("$ di-lifespan")]
    assert commands == ["broker", "run", "consume", "publish", "publish"]
    assert sorted(line for line in lines if line.startswith("  prediction: ")) == [
        "  prediction: setosa",
        "  prediction: versicolor",
        "  prediction: virginica",
    ]
    (dead,) = [line for line in lines if line.startswith("  dead letter: ")]
    assert "sepal_length" in dead
    service = [line.removeprefix("  service | ") for line in lines if "service | " in line]
    ready = next(n for n, line in enumerate(service) if line.startswith("ready"))
    assert any("startup report: 4 of 4 resources ready" in line for line in service[:ready])
    stopping = next(n for n, line in enumerate(service) if "received SIGTERM" in line)
    assert service[stopping + 1 :] == [
        *[line for line in service[stopping + 1 :] if line.endswith("model cleared")],
        *[line for line in service[stopping + 1 :] if "prediction log closed after 3" in line],
        "stopped",
    ]
    assert lines[-1].startswith("demo done")


async def test_the_iris_service_predicts_and_dead_letters_a_negative_measure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On the memory broker the real model classifies; a negative length is dead-lettered."""
    from examples.iris.app import app
    from examples.iris.model import IrisPrediction

    monkeypatch.setenv("IRIS_PREDICTION_LOG", str(tmp_path / "predictions.log"))
    caplog.set_level(logging.INFO, logger="examples.iris")
    async with TestClient(app, raise_handler_errors=False) as client:
        flower = {"sepal_length": 6.7, "sepal_width": 3.1, "petal_length": 5.6, "petal_width": 2.4}
        await client.publish("input_data", flower, key="f1")
        await client.publish("input_data", {**flower, "petal_width": -0.1}, key="f2")
        assert client.published("predictions", IrisPrediction) == [
            IrisPrediction(species="virginica")
        ]
        (dead,) = client.messages("input_data.dlq")
        assert dead.key == b"f2"
        assert "petal_width: Input should be greater than or equal to 0" in (
            dead.header("x-error") or ""
        )
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith("model loaded")
    assert "model cleared" in messages


# --- examples/settings -----------------------------------------------------------------------

SETTINGS_DIR = ROOT / "examples" / "settings"


def test_the_settings_demo_reads_the_env_file_chosen_and_runs_each_hook_in_order() -> None:
    """`--env .env.test` picks the test settings; hooks and finalizers print in their order."""
    result = subprocess.run(
        [sys.executable, "-m", "examples.settings", "--env", ".env.test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DI_LIFESPAN_BROKER": "memory://"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "on_startup 1: test settings, greeting 'Hi'",
        "on_startup 2: settings checked",
        "resource: greeter ready (test)",
        "after_startup 1: greeter warmed up",
        "after_startup 2: started event published",
        "greeting: HI, ADA!",
        "greeting: HI, GRACE!",
        "on_shutdown 2: 3 greetings so far",
        "on_shutdown 1: no new work",
        "after_shutdown 2: goodbye",
        "after_shutdown 1: 3 greetings in all",
        "resource: greeter closed after 3 greetings",
    ]


@pytest.mark.parametrize(
    ("env_file", "greeting", "environment"),
    [(".env", "Good morning, Ada!", "production"), (".env.test", "HI, ADA!", "test")],
)
async def test_the_greeter_reads_the_env_file_it_is_given(
    env_file: str, greeting: str, environment: str
) -> None:
    """Each env file gives its own settings to the resources and the hooks."""
    from examples.settings.app import create_app

    async with TestClient(create_app(SETTINGS_DIR / env_file)) as client:
        await client.publish("names", "Ada")
        assert client.published("greetings") == [greeting]
        assert client.published("events") == [{"event": "started", "environment": environment}]


async def test_an_environment_variable_wins_over_the_env_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GREETER_* variables are layered over the env file's values."""
    from examples.settings.app import create_app

    monkeypatch.setenv("GREETER_GREETING", "Ahoy")
    async with TestClient(create_app(SETTINGS_DIR / ".env")) as client:
        await client.publish("names", "Ada")
        assert client.published("greetings") == ["Ahoy, Ada!"]


async def test_a_startup_hook_refuses_test_settings_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An on_startup check stops the start with one line naming the hook and the reason."""
    from di_lifespan import StartupError
    from examples.settings.app import create_app

    monkeypatch.setenv("GREETER_SHOUT", "true")
    with pytest.raises(StartupError) as caught:
        async with TestClient(create_app(SETTINGS_DIR / ".env")):
            pass
    assert "refuse_shouting_in_production" in str(caught.value)
    assert "GREETER_SHOUT is for tests only" in str(caught.value)


# --- examples/db_pool ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL for the session; skipped only where its binaries do not exist."""
    from examples.db_pool.postgres import find_binaries, throwaway_postgres

    if find_binaries() is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or under"
            " /usr/lib/postgresql/*/bin; .ci/run installs Debian's postgresql package"
        )
    with throwaway_postgres() as dsn:
        yield dsn


@pytest.fixture
async def database(postgres_server: str) -> AsyncIterator[str]:
    """A fresh, empty database on the session's server for one test; its DSN."""
    import asyncpg

    name = f"test_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def db_pool_client(dsn: str, *, raise_handler_errors: bool = True) -> TestClient:
    """The db_pool app on the memory broker, on the test's database."""
    from examples.db_pool.app import Settings, app

    return TestClient(
        app,
        overrides=[override(Settings, Settings(dsn=dsn))],
        raise_handler_errors=raise_handler_errors,
    )


async def stock_apples(client: TestClient, quantity: int) -> Any:
    """Put ``quantity`` apples in stock; return the pool."""
    import asyncpg

    pool = await client.container.get(asyncpg.Pool)
    await pool.execute("INSERT INTO stock VALUES ('apple', $1)", quantity)
    return pool


async def test_a_handler_that_returns_commits_its_transaction(database: str) -> None:
    """The order row and the stock change are committed together."""
    async with db_pool_client(database) as client:
        pool = await stock_apples(client, 3)
        await client.publish("orders", {"id": "o1", "item": "apple", "quantity": 2})
        assert await pool.fetchval("SELECT quantity FROM orders WHERE id = 'o1'") == 2
        assert await pool.fetchval("SELECT quantity FROM stock") == 1


async def test_a_handler_that_raises_rolls_its_transaction_back(database: str) -> None:
    """Short stock fails the handler after its insert: the insert is rolled back too."""
    import asyncpg

    async with db_pool_client(database) as client:
        pool = await stock_apples(client, 3)
        with pytest.raises(asyncpg.CheckViolationError):
            await client.publish("orders", {"id": "o2", "item": "apple", "quantity": 5})
        assert await pool.fetchval("SELECT count(*) FROM orders") == 0
        assert await pool.fetchval("SELECT quantity FROM stock") == 3


async def test_a_failed_order_is_retried_dead_lettered_and_recorded(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each attempt rolls back; the dead letter is stored as a rejection; the pool closes."""
    caplog.set_level(logging.INFO, logger="examples.db_pool")
    async with db_pool_client(database, raise_handler_errors=False) as client:
        pool = await stock_apples(client, 3)
        await client.publish("orders", {"id": "o3", "item": "pear", "quantity": 1})
        assert await pool.fetchval("SELECT count(*) FROM orders") == 0
        assert await pool.fetchval("SELECT reason FROM rejections WHERE id = 'o3'") == (
            "LookupError: no stock of 'pear'"
        )
    assert pool.is_closing()
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("rolled back: LookupError") == 2  # Retry(attempts=2)
    assert messages[-1] == "pool closed"


async def test_the_db_pool_demo_commits_one_order_and_rejects_the_other(database: str) -> None:
    """`python -m examples.db_pool` on the test's database prints the committed and the rejected."""
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, "-m", "examples.db_pool"],
            cwd=ROOT,
            env={**os.environ, "DB_POOL_DSN": database, "DI_LIFESPAN_BROKER": "memory://"},
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [
        "order order-1: 2 apple",
        "apples left: 1",
        'rejected order-2: CheckViolationError: new row for relation "stock" violates check'
        ' constraint "stock_quantity_check"',
    ]
    assert result.stderr.decode().rstrip().endswith("INFO examples.db_pool: pool closed")


# --- examples/fastapi ------------------------------------------------------------------------

FLOWER = {"sepal_length": 6.7, "sepal_width": 3.1, "petal_length": 5.6, "petal_width": 2.4}


class AlwaysFirst:
    """A stand-in classifier: every flower is of the first species."""

    def predict(self, rows: list[list[float]]) -> list[int]:
        return [0 for _ in rows]


def http_client(api: Any) -> Any:
    """An httpx client calling the ASGI app in process."""
    import httpx

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")


async def test_the_fastapi_example_serves_http_and_kafka_from_one_test_client() -> None:
    """Under TestClient, with a fake model, HTTP and the Kafka handler share the store."""
    from examples.fastapi.app import api, app
    from examples.iris.model import IrisModel

    fake = IrisModel(AlwaysFirst(), ("fake-species",))
    async with TestClient(app, overrides=[override(IrisModel, fake)]) as kafka:
        async with http_client(api) as client:
            assert (await client.post("/predict", json=FLOWER)).json() == {
                "species": "fake-species"
            }
            assert (await client.get("/flowers/k1")).status_code == 404
            response = await client.post("/flowers/k1", json=FLOWER)
            assert response.status_code == 202
            await kafka.settle()
            assert (await client.get("/flowers/k1")).json() == {"species": "fake-species"}
            assert (await client.get("/stats")).json() == {"http": 1, "kafka": 1}
        assert kafka.published("predictions") == [{"species": "fake-species"}]


async def test_the_fastapi_example_loads_the_model_once_under_the_asgi_lifespan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The ASGI lifespan starts the app: one model, fitted once, serves both sides."""
    from asgi_lifespan import LifespanManager

    from examples.fastapi.app import api, app

    caplog.set_level(logging.INFO, logger="examples.fastapi")
    # Its startup includes scikit-learn's import, seconds on a busy machine.
    async with LifespanManager(api, startup_timeout=60), http_client(api) as client:
        assert (await client.post("/predict", json=FLOWER)).json() == {"species": "virginica"}
        await app.publish("input_data", FLOWER, key="k2")
        with anyio.fail_after(10):
            while (await client.get("/flowers/k2")).status_code == 404:  # noqa: ASYNC110  # polling over HTTP, as a client would
                await anyio.sleep(0.01)
        assert (await client.get("/flowers/k2")).json() == {"species": "virginica"}
    assert [record.getMessage() for record in caplog.records] == ["model loaded", "model cleared"]


async def test_the_fastapi_example_under_uvicorn_stops_gracefully_on_sigint() -> None:
    """`python -m examples.fastapi` serves HTTP; SIGINT runs the app's shutdown, exit 0."""
    import signal
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await anyio.open_process(
        [sys.executable, "-m", "examples.fastapi", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "DI_LIFESPAN_BROKER": "memory://"},
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            with anyio.fail_after(30):
                while True:
                    try:
                        response = await client.post("/predict", json=FLOWER)
                        break
                    except httpx.ConnectError:
                        await anyio.sleep(0.1)
            assert response.json() == {"species": "virginica"}
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            assert await process.wait() == 0
        assert process.stderr is not None
        logged = b"".join([chunk async for chunk in process.stderr]).decode().splitlines()
        assert "INFO examples.fastapi: model cleared" in logged
        assert logged.index("INFO examples.fastapi: model cleared") > logged.index(
            "INFO:     Waiting for application shutdown."
        )
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
