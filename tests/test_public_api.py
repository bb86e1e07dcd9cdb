"""The public surface changes only on purpose."""

from __future__ import annotations

import importlib

import dishka
import pytest

import di_lifespan

EXPECTED = {
    "DEAD_LETTER_HEADERS",
    "App",
    "AppStatus",
    "Assignment",
    "Broker",
    "BrokerUnavailableError",
    "ConfigurationError",
    "Consumer",
    "DeliveryError",
    "DependencyError",
    "DiLifespanError",
    "EmbeddedKafkaError",
    "EncodingError",
    "HandlerTimeoutError",
    "FromDishka",
    "GraphError",
    "LifespanStateError",
    "MemoryBroker",
    "Message",
    "Outcome",
    "Outgoing",
    "PartitionStatus",
    "Provider",
    "Publisher",
    "ResourceStart",
    "Retry",
    "Router",
    "Scope",
    "SendRejectedError",
    "ShutdownError",
    "ShutdownStepError",
    "ShutdownTimeoutError",
    "StartupError",
    "StartupReport",
    "StartupTimeoutError",
    "Subscription",
    "TransportError",
    "from_context",
    "provide",
}


def test_the_public_names_are_exactly_the_expected_ones() -> None:
    """__all__ lists exactly the contract; adding or dropping a name must update this test."""
    assert set(di_lifespan.__all__) == EXPECTED
    assert len(di_lifespan.__all__) == len(EXPECTED)


def test_every_public_name_is_importable() -> None:
    """Each name in __all__ exists on the package."""
    for name in di_lifespan.__all__:
        assert getattr(di_lifespan, name) is not None


def test_dishka_names_are_dishkas_own() -> None:
    """Provider, provide, Scope, FromDishka and from_context are dishka's, re-exported."""
    assert di_lifespan.Provider is dishka.Provider
    assert di_lifespan.provide is dishka.provide
    assert di_lifespan.Scope is dishka.Scope
    assert di_lifespan.FromDishka is dishka.FromDishka
    assert di_lifespan.from_context is dishka.from_context


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            "di_lifespan.kafka",
            {"EmbeddedKafka", "EmbeddedKafkaBroker", "EmbeddedKafkaError", "KafkaBroker"},
        ),
        ("di_lifespan.testing", {"Override", "TestClient", "override"}),
        ("di_lifespan.fastapi", {"setup_dishka"}),
        ("di_lifespan.cli", {"app", "main"}),
    ],
)
def test_the_public_submodules_export_exactly_their_names(module: str, names: set[str]) -> None:
    """The submodules users import by name keep their surface too."""
    imported = importlib.import_module(module)
    assert set(imported.__all__) == names
    for name in names:
        assert getattr(imported, name) is not None
