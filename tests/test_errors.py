"""The error hierarchy: one root, structured fields, one-line messages."""

from __future__ import annotations

import re

import pydantic
import pytest

import di_lifespan
from di_lifespan import (
    BrokerUnavailableError,
    ConfigurationError,
    DependencyError,
    DiLifespanError,
    EmbeddedKafkaError,
    LifespanStateError,
    SendRejectedError,
    ShutdownTimeoutError,
    StartupError,
    StartupTimeoutError,
)
from di_lifespan._errors import describe


def test_every_public_error_derives_from_the_root() -> None:
    """Every exception class di_lifespan exports is a DiLifespanError."""
    exported = [getattr(di_lifespan, name) for name in di_lifespan.__all__]
    errors = [item for item in exported if isinstance(item, type) and issubclass(item, Exception)]
    assert len(errors) == 17
    assert all(issubclass(error, DiLifespanError) for error in errors)


TREE_LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w*Error)\b")


def drawn_tree() -> dict[str, str | None]:
    """Each class drawn in _errors' docstring tree, with the class drawn as its parent.

    A tree line is the class name after the drawing (four columns a level), then a note.
    """
    parents: dict[str, str | None] = {}
    path: list[str] = []
    root_column: int | None = None
    for line in (di_lifespan._errors.__doc__ or "").splitlines():
        found = TREE_LINE.match(line)
        if found is None:
            continue
        column = len(found["indent"])
        root_column = column if root_column is None else root_column
        depth = (column - root_column) // 4
        del path[depth:]
        parents[found["name"]] = path[-1] if path else None
        path.append(found["name"])
    return parents


def test_the_tree_in_the_docstring_matches_the_classes() -> None:
    """The docstring draws every error class of _errors once, under its real base class."""
    parents = drawn_tree()
    defined = {
        name
        for name, item in vars(di_lifespan._errors).items()
        if isinstance(item, type) and issubclass(item, DiLifespanError)
    }
    assert set(parents) == defined
    assert parents["DiLifespanError"] is None
    for name, parent in parents.items():
        if parent is not None:
            assert (
                getattr(di_lifespan._errors, parent) in getattr(di_lifespan._errors, name).__bases__
            )


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (ConfigurationError("App(x=...)", "bad"), "App(x=...): bad"),
        (LifespanStateError("stop the app", "stopped"), "cannot stop the app: the app is stopped"),
        (
            StartupError("resource Model", "OSError: gone", path=("Predictor", "Model")),
            "resource Model failed to start: OSError: gone (dependency path: Predictor -> Model)",
        ),
        (
            StartupTimeoutError("resource Model", 2.5),
            "resource Model failed to start: did not finish within 2.5 s",
        ),
        (
            DependencyError("after_startup hook f", "x", "asks for Y"),
            "after_startup hook f failed to start: parameter 'x' asks for Y",
        ),
        (
            ShutdownTimeoutError("finalizer of Db", 3),
            "finalizer of Db failed: did not finish within 3 s",
        ),
        (
            EmbeddedKafkaError("port 9092 is already in use", address="127.0.0.1:9092"),
            "embedded Kafka broker on 127.0.0.1:9092: port 9092 is already in use",
        ),
        (
            SendRejectedError("kafka://k:9092", "prices", "the message is too large"),
            "send to prices on kafka://k:9092 failed: the message is too large",
        ),
        (
            BrokerUnavailableError("kafka://k:9092", "commit", "NodeNotReadyError", waited=30),
            "commit on kafka://k:9092 failed: NodeNotReadyError (unreachable for 30 s)",
        ),
    ],
)
def test_messages_are_one_line_a_person_can_act_on(error: DiLifespanError, text: str) -> None:
    """Each error's str() is the documented one-line message."""
    assert str(error) == text
    assert "\n" not in str(error)


def test_a_validation_error_is_described_on_one_line_naming_each_field() -> None:
    """describe() turns a pydantic ValidationError into one line naming the wrong fields."""

    class Body(pydantic.BaseModel):
        width: float
        name: str

    with pytest.raises(pydantic.ValidationError) as caught:
        Body.model_validate({"width": "wide"})
    assert describe(caught.value) == (
        "Body is invalid: width: Input should be a valid number, unable to parse string as a "
        "number (got 'wide'); name: Field required"
    )


def test_describe_shows_only_an_excerpt_of_each_input_and_the_first_fields() -> None:
    """Input values are user data: each is cut to ~200 characters, and only 10 fields are named."""

    class Body(pydantic.BaseModel):
        name: int
        items: list[int]

    with pytest.raises(pydantic.ValidationError) as caught:
        Body.model_validate({"name": "n" * 1_000_000, "items": ["x"] * 50})
    text = describe(caught.value)
    assert len(text) < 2000
    assert "(got 'nnnnn" in text
    assert "... (1000000 characters)" in text
    assert text.endswith("; and 41 more")


def test_describe_cuts_a_huge_message_of_any_error() -> None:
    """An exception whose message quotes a huge body is described in at most ~2000 characters."""
    text = describe(ValueError("x" * 1_000_000))
    assert text.startswith("ValueError: xxx")
    assert len(text) <= 2100
    assert text.endswith("... (1000012 characters)")
