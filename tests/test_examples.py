"""The examples run end to end as the README says."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_iris_service_demo_classifies_audits_and_cleans_up(tmp_path: Path) -> None:
    """The demo classifies three flowers on embedded://, dead-letters the bad one, stops."""
    log = tmp_path / "predictions.log"
    result = subprocess.run(
        [sys.executable, "-m", "examples.iris_service"],
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
    assert lines[-2:] == ["model released", "prediction log closed after 3 lines"]
    assert "startup report: 4 of 4 resources ready" in result.stderr
    assert ", broker embedded://" in result.stderr  # the demo runs on a Kafka-protocol broker
    assert sorted(log.read_text().splitlines()) == [
        "flower-1 -> setosa",
        "flower-2 -> versicolor",
        "flower-3 -> virginica",
    ]
