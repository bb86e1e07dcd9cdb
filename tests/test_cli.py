"""The di-lifespan command, driven as a user drives it, reading its output.

Commands that handle signals or set up logging run in child processes; the others run in this
one (through typer's test runner), which is quicker.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner, Result

from di_lifespan.cli import app as cli_app
from tests.confluent import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "tests.apps.cli_service:app"
WAIT = 30.0  # seconds a test waits for an expected line


def command(*arguments: str) -> list[str]:
    """The command line of ``di-lifespan ARGUMENTS`` (the module runs the console script)."""
    return [sys.executable, "-m", "di_lifespan.cli", *arguments]


def environment(**extra: str) -> dict[str, str]:
    """The environment, with the repository importable from any directory."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def cli(*arguments: str, cwd: Path = ROOT, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; its stdout and stderr apart."""
    return subprocess.run(
        command(*arguments),
        cwd=cwd,
        env=environment(**extra),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def invoke(*arguments: str) -> Result:
    """Run a command inside this process: only those that set up no logging and no signals."""
    return CliRunner().invoke(cli_app, list(arguments))


class Running:
    """A command running in the background, its stdout and stderr read as one stream of lines."""

    def __init__(self, *arguments: str, cwd: Path = ROOT, **extra: str) -> None:
        self.process = subprocess.Popen(
            command(*arguments),
            cwd=cwd,
            env=environment(**extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._new: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def next_match(self, pattern: str, timeout: float) -> re.Match[str] | None:
        """The next line (of those not seen yet) matching ``pattern``; None if none comes."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._new.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self._new.put(None)  # the end, for the next reader too
                return None
            self.lines.append(line)
            if found := re.search(pattern, line):
                return found
        return None

    def wait_for(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Wait for a line matching ``pattern``; fail, showing the output, if none comes."""
        found = self.next_match(pattern, timeout)
        if found is None:
            self.stop()
            pytest.fail(f"no line matched {pattern!r}; output:\n" + "\n".join(self.lines))
        return found

    def finish(self, signal_number: int = signal.SIGTERM) -> int:
        """Send a signal, read the rest of the output, and return the exit status."""
        self.process.send_signal(signal_number)
        status = self.process.wait(timeout=WAIT)
        while (line := self._new.get(timeout=WAIT)) is not None:
            self.lines.append(line)
        return status

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """An env file that sets the service's greeting."""
    path = tmp_path / ".env.test"
    path.write_text("GREETING=hi from .env.test\n")
    return path


def test_run_passes_env_and_extra_options_to_hooks_then_stops_in_order(env_file: Path) -> None:
    """--env feeds the settings and the hook's env; --region and --port reach it by name.

    The startup report comes once the app is ready; SIGTERM runs the finalizers in reverse
    order of creation, and the command exits with 0.
    """
    running = Running("run", SERVICE, "--env", str(env_file), "--region", "us", "--port=8080")
    running.wait_for(r"ready \(Ctrl\+C to stop\)")
    status = running.finish(signal.SIGTERM)
    lines = running.lines
    assert status == 0, "\n".join(lines)
    assert f"setup env={env_file} region=us port=8080 greeting=hi from .env.test" in lines
    report = next(i for i, line in enumerate(lines) if line.startswith("startup report: 3 of 3"))
    order = [
        "model loaded (hi from .env.test)",
        "cache ready",
        "ready",
        lines[report],
        "cache cleared",
        "model closed",
        "stopped",
    ]
    assert [line for line in lines if line in order] == order
    assert re.search(r"Model\s+\+\d\.\d{3}s\s+\d\.\d{3}s\s+ok", "\n".join(lines))


def test_run_reads_dot_env_by_default_and_hooks_keep_their_defaults(tmp_path: Path) -> None:
    """Without --env, ./.env feeds the settings; a hook's options not given keep defaults."""
    (tmp_path / ".env").write_text("GREETING=from dot env\n")
    running = Running("run", SERVICE, cwd=tmp_path)
    running.wait_for(r"^ready \(Ctrl\+C to stop\)")
    assert running.finish(signal.SIGINT) == 0
    assert "setup env=.env region=eu port=0 greeting=from dot env" in running.lines


def test_an_option_no_hook_takes_is_one_error_line_and_exit_status_2() -> None:
    """A mistyped option prints one line naming it and the options there are; status 2."""
    result = cli("run", SERVICE, "--regoin", "us")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "error: option --regoin: no hook of tests.apps.cli_service:app takes a parameter"
        " named 'regoin' (options its hooks take: --env, --port, --region)\n"
    )


@pytest.mark.parametrize(
    ("arguments", "line"),
    [
        (
            ["run", SERVICE, "--port", "eighty"],
            "error: on_startup hook setup: option port='eighty': Input should be a valid integer,"
            " unable to parse string as an integer",
        ),
        (
            ["run", "tests.apps.nowhere:app"],
            "error: cannot import 'tests.apps.nowhere': no module named 'tests.apps.nowhere'",
        ),
        (
            ["check", "tests.apps.cli_broken:nothing"],
            "error: module 'tests.apps.cli_broken' has no attribute 'nothing'",
        ),
        (
            ["graph", "tests.apps.cli_broken:not_an_app"],
            "error: tests.apps.cli_broken:not_an_app is a str, not a di_lifespan App",
        ),
        (
            ["run", SERVICE, "--env", "missing.env"],
            "error: --env 'missing.env': the file does not exist",
        ),
        (
            ["publish", "--broker", "memory://", "t", "1"],
            "error: --broker 'memory://': a memory:// broker lives inside one process",
        ),
        (
            ["consume", "--broker", "embedded://", "t"],
            "error: --broker 'embedded://': embedded:// would start a broker of its own",
        ),
        (
            ["publish", "--broker", "kafka://k:9092?acks=1", "t", "1"],
            "error: --broker 'kafka://k:9092?acks=1': unknown kafka:// option 'acks'",
        ),
        (["publish", "--broker", "kafka://k:9092", "t", "{oops"], "error: message 1 is not JSON"),
    ],
    ids=[
        "bad-option-value",
        "no-module",
        "no-attribute",
        "not-an-app",
        "no-env-file",
        "memory-broker",
        "embedded-broker",
        "bad-url-option",
        "not-json",
    ],
)
def test_a_usage_error_is_one_line_and_exit_status_2(arguments: list[str], line: str) -> None:
    """A bad target, option, value or broker prints one error line and exits with 2."""
    result = invoke(*arguments)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(line), result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_debug_adds_the_traceback() -> None:
    """With --debug the error line follows the traceback of its cause."""
    result = invoke("check", "tests.apps.cli_broken:nothing", "--debug")
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: module 'tests.apps.cli_broken'")


def test_run_of_an_app_that_cannot_start_exits_1_naming_the_cause() -> None:
    """A startup failure prints one error line naming what is missing, and exits with 1."""
    result = cli("run", "tests.apps.cli_broken:resource_app")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "error: invalid dependency graph: Cannot find factory for (Database, component='')."
    )


def test_check_lists_resources_handlers_and_hooks() -> None:
    """`check` shows each resource's scope, kind and needs, the handlers' topics and the hooks."""
    result = invoke("check", SERVICE)
    assert result.exit_code == 0, result.stderr
    rows = [re.split(r"\s*│\s*", line.strip("│ ")) for line in result.stdout.splitlines()]
    assert ["Model", "APP", "generator (finalizer)", "Settings"] in rows
    assert ["Cache", "APP", "generator (finalizer)", "Model"] in rows
    assert ["Message", "REQUEST", "context"] in rows
    assert ["bill", "orders", "orders.billing", "orders.invoices", "orders.dlq", "Cache"] in rows
    assert ["setup", "on_startup", "Settings", "--env, --region, --port"] in rows
    assert result.stdout.splitlines()[-1] == (
        "ok: 5 resources, 1 handlers, 2 hooks; broker memory://"
    )


def test_check_names_a_missing_provider_and_exits_1() -> None:
    """`check` on an app whose handler lacks a provider exits with 1 naming the missing type."""
    result = cli("check", "tests.apps.cli_broken:handler_app")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: handler pay failed to start: parameter 'accounts' asks for Accounts, which no"
        " provider gives\n"
    )


def test_check_names_what_a_resource_lacks() -> None:
    """`check` on an app whose resource needs an unprovided type names that type; status 1."""
    result = invoke("check", "tests.apps.cli_broken:resource_app")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: invalid dependency graph: Cannot find factory for (Database, component='')."
    )


def test_graph_draws_resources_handlers_and_topics() -> None:
    """`graph` prints a Mermaid flowchart: Settings → Model → Cache → bill, and its topics."""
    result = invoke("graph", SERVICE)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "flowchart LR"
    ids = {
        name: re.search(rf"(\w+)\[\"{name}\"\]", result.stdout)
        for name in ("Settings", "Model", "Cache")
    }
    node = {name: found.group(1) for name, found in ids.items() if found}
    handler = re.search(r"(\w+)\{\{\"bill\"\}\}", result.stdout)
    assert handler is not None
    assert f"  {node['Settings']} --> {node['Model']}" in lines
    assert f"  {node['Model']} --> {node['Cache']}" in lines
    assert f"  {node['Cache']} --> {handler.group(1)}" in lines
    assert any(re.fullmatch(rf'  \w+\[/"orders"/\] --> {handler.group(1)}', x) for x in lines)
    assert any(
        re.fullmatch(rf'  {handler.group(1)} --> \w+\[/"orders.invoices"/\]', x) for x in lines
    )
    assert any(
        re.fullmatch(rf'  {handler.group(1)} -. failed .-> \w+\[/"orders.dlq"/\]', x) for x in lines
    )


def test_asyncapi_describes_channels_operations_and_schemas(tmp_path: Path) -> None:
    """`asyncapi` writes an AsyncAPI 3.0 document: the required keys, each topic, each schema."""
    result = invoke("asyncapi", SERVICE, "--title", "billing", "--version", "1.2.0")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "billing"
    assert document["info"]["version"] == "1.2.0"
    assert {name: channel["address"] for name, channel in document["channels"].items()} == {
        "orders": "orders",
        "orders.invoices": "orders.invoices",
        "orders.dlq": "orders.dlq",
    }
    actions = {name: op["action"] for name, op in document["operations"].items()}
    assert actions == {
        "bill.receive.orders": "receive",
        "bill.send.orders.invoices": "send",
        "bill.dead_letter.orders.dlq": "send",
    }
    for operation in document["operations"].values():
        channel = operation["channel"]["$ref"].removeprefix("#/channels/")
        for message in operation["messages"]:
            assert message["$ref"].startswith(f"#/channels/{channel}/messages/")
    group = document["operations"]["bill.receive.orders"]["bindings"]["kafka"]["groupId"]
    assert group["enum"] == ["orders.billing"]
    messages = document["components"]["messages"]
    assert messages["Order"]["payload"] == {"$ref": "#/components/schemas/Order"}
    assert messages["Invoice"]["payload"] == {"$ref": "#/components/schemas/Invoice"}
    assert "x-error" in messages["Order.dead_letter"]["headers"]["properties"]
    order = document["components"]["schemas"]["Order"]
    assert order["required"] == ["item", "quantity"]
    assert order["properties"]["quantity"]["exclusiveMinimum"] == 0
    written = tmp_path / "asyncapi.yaml"
    assert invoke("asyncapi", SERVICE, "--output", str(written)).exit_code == 0
    assert written.read_text().startswith("asyncapi: 3.0.0\ninfo:\n")


# --- on the embedded Kafka-protocol broker ---------------------------------------------------


def kafka_url(bootstrap: str) -> str:
    """A kafka:// URL for the test broker: no idempotence (Tansu), quick group joins."""
    return f"kafka://{bootstrap}?idempotent=false&session_timeout_ms=2000"


def new_topic(bootstrap: str, partitions: int) -> str:
    """A fresh topic of the given number of partitions."""
    name = f"cli-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    for future in admin.create_topics([NewTopic(name, num_partitions=partitions)]).values():
        future.result(timeout=10)
    return name


def test_publish_then_consume_round_trip(kafka_bootstrap: str) -> None:
    """`publish` sends JSON bodies with a key and a header; `consume` prints them as JSON lines."""
    topic = new_topic(kafka_bootstrap, 1)
    url = kafka_url(kafka_bootstrap)
    sent = cli(
        "publish",
        "--broker",
        url,
        topic,
        '{"item": "pear", "quantity": 2}',
        "[1, 2]",
        "--key",
        "k1",
        "--header",
        "x-source=cli",
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr == f"published 2 messages to {topic}\n"
    read = cli(
        "consume",
        topic,
        "--from-beginning",
        "--count",
        "2",
        "--timeout",
        "20",
        DI_LIFESPAN_BROKER=url,
    )
    assert read.returncode == 0, read.stderr
    lines = [json.loads(line) for line in read.stdout.splitlines()]
    assert [(line["offset"], line["key"], line["headers"], line["value"]) for line in lines] == [
        (0, "k1", {"x-source": "cli"}, {"item": "pear", "quantity": 2}),
        (1, "k1", {"x-source": "cli"}, [1, 2]),
    ]
    late = cli("consume", "--broker", url, topic, "--count", "1", "--timeout", "0.5")
    assert late.returncode == 1
    assert late.stderr == "error: got 0 of 1 messages within 0.5 s\n"


def produce_to_each_partition(bootstrap: str, topic: str, partitions: int, item: str) -> None:
    """One order on every partition of ``topic``."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False})
    for partition in range(partitions):
        body = json.dumps({"item": f"{item}{partition}", "quantity": 1})
        producer.produce(topic, body.encode(), partition=partition)
    assert producer.flush(10) == 0


def test_workers_share_the_partitions_and_a_killed_worker_is_restarted(
    kafka_bootstrap: str,
) -> None:
    """--workers 2: both workers handle messages, one killed is reported and started again.

    SIGTERM to the parent stops both workers gracefully; the parent exits with 0.
    """
    topic = new_topic(kafka_bootstrap, 2)
    running = Running(
        "run", SERVICE, "--workers", "2", "--broker", kafka_url(kafka_bootstrap), CLI_ORDERS=topic
    )
    first = int(running.wait_for(r"^worker 1 started \(pid (\d+)\)").group(1))
    running.wait_for(r"^worker 2 started")
    running.wait_for(r"^worker \d: ready")
    running.wait_for(r"^worker \d: ready")
    handlers: set[str] = set()
    deadline = time.monotonic() + WAIT
    while len(handlers) < 2 and time.monotonic() < deadline:
        # Until the group has settled, one worker may own both partitions.
        produce_to_each_partition(kafka_bootstrap, topic, 2, "pear")
        while found := running.next_match(r"^billed pear\d on partition \d by (\d+)", 2):
            handlers.add(found.group(1))
    assert len(handlers) == 2, "\n".join(running.lines)
    os.kill(first, signal.SIGKILL)
    running.wait_for(rf"^worker 1 \(pid {first}\) was killed by SIGKILL")
    running.wait_for(r"^starting worker 1 again in 0.5 s")
    running.wait_for(r"^worker 1 started \(pid (\d+)\)")
    running.wait_for(r"^worker 1: ready")
    assert running.finish(signal.SIGTERM) == 0, "\n".join(running.lines)
    assert sum(line == "worker 1: stopped" for line in running.lines) == 1
    assert sum(line == "worker 2: stopped" for line in running.lines) == 1


def test_reload_restarts_the_worker_when_a_file_changes(tmp_path: Path) -> None:
    """--reload starts the app again after a .py file under the current directory changes."""
    source = tmp_path / "svc.py"
    source.write_text(
        "from di_lifespan import App\n"
        "app = App()\n"
        "@app.after_startup\n"
        "def ready() -> None:\n"
        "    print('version 1', flush=True)\n"
    )
    running = Running("run", "svc:app", "--reload", cwd=tmp_path)
    running.wait_for("^version 1$")
    running.wait_for(r"^worker 1: ready \(Ctrl\+C")
    source.write_text(source.read_text().replace("version 1", "version 2"))
    running.wait_for(r"^svc.py changed: restarting 1 worker")
    running.wait_for("^version 2$")
    running.wait_for(r"^worker 1: ready \(Ctrl\+C")
    assert running.finish(signal.SIGINT) == 0, "\n".join(running.lines)
