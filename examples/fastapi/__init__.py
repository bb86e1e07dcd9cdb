"""HTTP routes and Kafka handlers in one process, sharing one container.

``python -m examples.fastapi`` serves ``api`` (in ``examples.fastapi.app``) with uvicorn.
"""
