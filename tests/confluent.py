"""confluent-kafka's admin client, typed the same whichever release is installed.

Releases before 2.13 ship no annotations (mypy strict refuses calling them); later ones do.
The bench extra (Quix Streams) holds confluent-kafka below 2.13, the dev extra takes the
newest: the tests reach the admin client through these names so both type-check.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import admin as _admin
from confluent_kafka import cimpl as _cimpl

AdminClient: Any = _admin.AdminClient
NewTopic: Any = _cimpl.NewTopic

__all__ = ["AdminClient", "NewTopic"]
