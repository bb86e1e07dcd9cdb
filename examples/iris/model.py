"""The iris classifier: a logistic regression fitted on scikit-learn's iris data set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, NonNegativeFloat

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


class IrisInput(BaseModel):
    """One flower's measurements, in centimetres: four non-negative numbers."""

    sepal_length: NonNegativeFloat
    sepal_width: NonNegativeFloat
    petal_length: NonNegativeFloat
    petal_width: NonNegativeFloat


class IrisPrediction(BaseModel):
    """The predicted species."""

    species: str


@dataclass(frozen=True)
class IrisModel:
    """A fitted classifier and the names of the species it tells apart."""

    classifier: Any  # sklearn ships no type hints
    species: tuple[str, ...]

    @classmethod
    def fit(cls) -> IrisModel:
        """Fit a logistic regression on the 150 flowers of the iris data set.

        Blocking work, scikit-learn's import (seconds) included: run it in a worker thread.
        """
        from sklearn.datasets import load_iris  # noqa: PLC0415  # imported where it is needed
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415  # same

        data = load_iris()
        classifier = LogisticRegression(max_iter=1000).fit(data.data, data.target)
        return cls(classifier, tuple(str(name) for name in data.target_names))

    def predict(self, flower: IrisInput) -> IrisPrediction:
        """The species the classifier gives ``flower``."""
        (label,) = self.classifier.predict([[getattr(flower, name) for name in FEATURES]])
        return IrisPrediction(species=self.species[int(label)])
