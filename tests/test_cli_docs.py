"""docs/cli.md runs as written: its files are saved, its shell blocks run line by line.

Commands that serve (``run``, ``broker``) are started, waited for until they are ready, and
stopped with SIGINT (in the foreground, as Ctrl+C does) or by the block's ``kill %1``.
``sleep`` lines are skipped (the test waits for readiness instead); the page's broker URL is
replaced by that of a broker started for this test.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from di_lifespan.kafka import EmbeddedKafka
from tests.test_cli import WAIT, Running, command, environment

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PAGE_BROKER = re.compile(r"kafka://127\.0\.0\.1:\d+\?idempotent=false&session_timeout_ms=\d+")


def blocks(language: str) -> list[str]:
    """The page's code blocks in ``language``, in order."""
    return [code for found, code in FENCE.findall(PAGE.read_text()) if found == language]


class Shell:
    """Runs the page's shell lines in one directory, keeping exports and background jobs."""

    def __init__(self, directory: Path, broker: str) -> None:
        self.directory = directory
        self.broker = broker
        self.exports: dict[str, str] = {}
        self.jobs: list[Running] = []
        self.outputs: dict[str, str] = {}  # a finished command line: its stdout and stderr

    def run_block(self, block: str) -> None:
        for line in block.splitlines():
            self.run_line(line.strip())
        assert not self.jobs, "a block left a background job running"

    def run_line(self, line: str) -> None:
        if not line or line.startswith(("#", "sleep ")):
            return
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            self.exports[name] = PAGE_BROKER.sub(self.broker, shlex.split(value)[0])
            return
        if line.startswith("kill"):
            signal_number = signal.SIGINT if "-INT" in line else signal.SIGTERM
            job = self.jobs.pop()
            assert job.finish(signal_number) == 0, "\n".join(job.lines)
            return
        expect_failure = "||" in line
        line = line.partition("||")[0].strip()
        background = line.endswith("&")
        words = shlex.split(line.removesuffix("&"))
        assert words[0] == "di-lifespan", line
        if words[1] in ("run", "broker") and not expect_failure:
            self.serve(words[1:], background=background)
            return
        result = subprocess.run(
            command(*words[1:]),
            cwd=self.directory,
            env=environment(**self.exports),
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        assert (result.returncode != 0) == expect_failure, result.stderr
        self.outputs[line] = result.stdout + result.stderr

    def serve(self, arguments: list[str], *, background: bool) -> None:
        job = Running(*arguments, cwd=self.directory, **self.exports)
        if arguments[0] == "broker":
            job.wait_for(r"^kafka://")
        elif "--workers" in arguments or "--reload" in arguments:
            count = (
                int(arguments[arguments.index("--workers") + 1]) if "--workers" in arguments else 1
            )
            for _ in range(count):
                job.wait_for(r"^worker \d: ready \(Ctrl\+C")
        else:
            job.wait_for(r"^ready \(Ctrl\+C")
        if background:
            self.jobs.append(job)
            return
        assert job.finish(signal.SIGINT) == 0, "\n".join(job.lines)
        self.outputs[shlex.join(["di-lifespan", *arguments])] = "\n".join(job.lines)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    """A directory holding the page's files, and a broker of its own for its Kafka examples."""
    for code in blocks("python") + blocks("ini"):
        name = code.splitlines()[0].removeprefix("# ")
        (tmp_path / name).write_text(code)
    with EmbeddedKafka() as kafka:
        url = f"kafka://{kafka.bootstrap_servers}?idempotent=false&session_timeout_ms=2000"
        yield Shell(tmp_path, url)


def test_every_shell_block_of_the_cli_page_runs(shell: Shell) -> None:
    """Each command exits as the page says; the outputs shown are what the commands print."""
    for block in blocks("bash"):
        shell.run_block(block)
    texts = blocks("text")
    outputs = shell.outputs
    ran = outputs["di-lifespan run shop:app --env .env.test --region us"].splitlines()
    for line in ("starting in us with .env.test", "prices loaded from test-prices.json"):
        assert line in ran
    assert ran[-2:] == ["prices unloaded", "stopped"]
    mistyped = next(text for text in texts if text.startswith("error: option --regoin"))
    assert outputs["di-lifespan run shop:app --regoin us"] == mistyped.splitlines()[0] + "\n"
    drawn = next(text for text in texts if text.startswith("flowchart LR"))
    assert outputs["di-lifespan graph shop:app"] == drawn
    document = json.loads((shell.directory / "asyncapi.json").read_text())
    assert document["info"] == {"title": "shop", "version": "1.0.0"}
    assert outputs["di-lifespan asyncapi shop:app --format yaml"].startswith("asyncapi: 3.0.0\n")
    consumed = outputs["di-lifespan consume invoices --from-beginning --count 1 --timeout 30"]
    invoice = json.loads(consumed.splitlines()[0])
    assert (invoice["key"], invoice["value"]) == ("pear", {"item": "pear", "total": 6.0})
