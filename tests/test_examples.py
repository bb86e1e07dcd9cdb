"""The examples run end to end as the README and docs/examples.md say."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from di_lifespan.testing import TestClient

ROOT = Path(__file__).resolve().parent.parent


# --- examples/iris ---------------------------------------------------------------------------


def test_the_iris_demo_classifies_audits_and_cleans_up(tmp_path: Path) -> None:
    """`python -m examples.iris` classifies three flowers on embedded://, dead-letters one, stops."""
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
