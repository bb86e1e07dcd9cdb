"""Kafka: a local Kafka-protocol broker for demos and tests.

``EmbeddedKafka`` starts the memory-only Tansu broker from the ``embedded`` extra on a
loopback port. The aiokafka transport (``kafka://``) joins this module next.
"""

from ._embedded import EmbeddedKafka, EmbeddedKafkaError

__all__ = ["EmbeddedKafka", "EmbeddedKafkaError"]
