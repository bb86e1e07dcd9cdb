"""The examples run end to end as the README says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_iris_service_demo_classifies_audits_and_cleans_up(tmp_path: Path) -> None:
    """Make demo's service classifies three flowers, dead-letters the bad one, and stops cleanly."""
    log = tmp_path / "predictions.log"
    result = subprocess.run(
        [sys.executable, "-m", "examples.iris_service"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "IRIS_PREDICTION_LOG": str(log)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        "audited: ['flower-1 -> setosa', 'flower-2 -> versicolor', 'flower-3 -> virginica']"
        in lines
    )
    assert any(
        line.startswith("dead letter {'sepal_length': -1} (ValidationError)") for line in lines
    )
    assert lines[-2:] == ["model released", "prediction log closed after 3 lines"]
    assert "startup report: 3 of 3 resources ready" in result.stderr
    assert log.read_text().splitlines() == [
        "flower-1 -> setosa",
        "flower-2 -> versicolor",
        "flower-3 -> virginica",
    ]
