"""Kafka: the transport on a Kafka-protocol broker, and a local broker for demos and tests.

``KafkaBroker`` is what ``App(broker="kafka://host:9092")`` uses (aiokafka underneath);
``EmbeddedKafkaBroker`` is ``embedded://``: an ``EmbeddedKafka`` (the memory-only Tansu broker
from the ``embedded`` extra, on a loopback port) started and stopped with the app.
"""

from ._embedded import EmbeddedKafka
from ._errors import EmbeddedKafkaError
from ._kafka import EmbeddedKafkaBroker, KafkaBroker

__all__ = ["EmbeddedKafka", "EmbeddedKafkaBroker", "EmbeddedKafkaError", "KafkaBroker"]
