"""di_lifespan: Kafka message services whose resources live in a dishka container.

Resources are plain dishka providers; the app creates every APP-scoped one at startup,
concurrently and each within a time limit, and finalizes them in reverse order at exit.
"""

from dishka import FromDishka, Provider, Scope, from_context, provide

from ._app import App, AppStatus
from ._broker import Assignment, Broker, Consumer, PartitionStatus, Subscription
from ._delivery import DEAD_LETTER_HEADERS, Outgoing, Publisher
from ._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    DeliveryError,
    DependencyError,
    DiLifespanError,
    EmbeddedKafkaError,
    EncodingError,
    GraphError,
    HandlerTimeoutError,
    LifespanStateError,
    SendRejectedError,
    ShutdownError,
    ShutdownStepError,
    ShutdownTimeoutError,
    StartupError,
    StartupTimeoutError,
    TransportError,
)
from ._handlers import Retry
from ._memory import MemoryBroker
from ._message import Message
from ._report import Outcome, ResourceStart, StartupReport
from ._router import Router

__all__ = [
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
    "FromDishka",
    "GraphError",
    "HandlerTimeoutError",
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
]
