"""The figures each reliability case reports: one log line, the same shape for every case.

Run ``pytest tests/reliability --log-cli-level=INFO`` to see them; docs/reliability.md holds the
figures of the last run. Inputs and outputs are counted by id: ``outputs`` counts every output
(duplicates included), ``lost`` the inputs with neither an output nor a dead letter.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

logger = logging.getLogger("tests.reliability")


@dataclass
class Figures:
    """One case's counts; ``report()`` logs them and returns them for the assertions."""

    case: str
    inputs: int = 0
    outputs: Counter[int] = field(default_factory=Counter)  # output count by input id
    dead_letters: Counter[int] = field(default_factory=Counter)  # dead letters by input id
    started: float = field(default_factory=time.monotonic)
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def lost(self) -> list[int]:
        """Input ids with neither an output nor a dead letter."""
        return [
            i for i in range(self.inputs) if i not in self.outputs and i not in self.dead_letters
        ]

    @property
    def duplicates(self) -> int:
        """Outputs and dead letters beyond one per input."""
        ended = self.outputs + self.dead_letters
        return sum(ended.values()) - len(ended)

    def count(self, outputs: Iterable[int] = (), dead_letters: Iterable[int] = ()) -> None:
        """Add outputs and dead letters, by input id."""
        self.outputs.update(outputs)
        self.dead_letters.update(dead_letters)

    def report(self) -> Figures:
        """Log the one line docs/reliability.md copies: case, counts, time, notes."""
        notes = "".join(f" {name}={value}" for name, value in self.notes.items())
        logger.info(
            "figures %s: inputs=%d outputs=%d dead_letters=%d lost=%d duplicates=%d time=%.1fs%s",
            self.case,
            self.inputs,
            sum(self.outputs.values()),
            sum(self.dead_letters.values()),
            len(self.lost),
            self.duplicates,
            time.monotonic() - self.started,
            notes,
        )
        return self
