"""The iris classifier the examples serve: a nearest-centroid model trained from a CSV file."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, PositiveFloat

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


class IrisInput(BaseModel):
    """One flower's measurements, in centimetres."""

    sepal_length: PositiveFloat
    sepal_width: PositiveFloat
    petal_length: PositiveFloat
    petal_width: PositiveFloat


class IrisPrediction(BaseModel):
    """The predicted species."""

    species: str


@dataclass(frozen=True)
class IrisModel:
    """The mean measurements of each species; a flower gets the species of the nearest mean."""

    centroids: dict[str, tuple[float, ...]]

    @classmethod
    def train(cls, path: Path) -> IrisModel:
        """Read labelled rows from ``path`` and average them per species."""
        sums: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        with path.open(newline="") as rows:
            for row in csv.DictReader(rows):
                species = row["species"]
                values = [float(row[name]) for name in FEATURES]
                totals = sums.setdefault(species, [0.0] * len(FEATURES))
                sums[species] = [total + value for total, value in zip(totals, values, strict=True)]
                counts[species] = counts.get(species, 0) + 1
        if not counts:
            raise ValueError(f"{path} holds no labelled rows")
        return cls({name: tuple(total / counts[name] for total in sums[name]) for name in sums})

    def predict(self, flower: IrisInput) -> IrisPrediction:
        """The species whose mean is nearest to ``flower``."""
        point = tuple(getattr(flower, name) for name in FEATURES)
        species = min(self.centroids, key=lambda name: math.dist(point, self.centroids[name]))
        return IrisPrediction(species=species)
