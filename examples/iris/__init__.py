"""The iris service: a model fitted at startup classifies flowers from a topic to a topic.

``app`` (in ``examples.iris.app``) is the service; ``python -m examples.iris`` runs the demo.
"""
