"""The examples run end to end as the README says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_lifespan_demo_classifies_and_cleans_up(tmp_path: Path) -> None:
    """The demo program starts, classifies three flowers, and finalizes its resources."""
    log = tmp_path / "predictions.log"
    result = subprocess.run(
        [sys.executable, "-m", "examples.lifespan_demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "IRIS_PREDICTION_LOG": str(log)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.rsplit(" -> ", 1)[1] for line in lines if " -> " in line] == [
        "setosa",
        "versicolor",
        "virginica",
    ]
    assert lines[-2:] == ["model released", "prediction log closed"]
    assert "startup report: 3 of 3 resources ready" in result.stderr
    assert len(log.read_text().splitlines()) == 3
