"""Serve the example with uvicorn: ``python -m examples.fastapi [--port 8000]``.

Then, from another shell::

    curl -X POST localhost:8000/predict -H 'content-type: application/json' \\
        -d '{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'

Ctrl+C stops the server: the app's shutdown runs in uvicorn's lifespan, handlers finish,
the model is cleared.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m examples.fastapi")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run("examples.fastapi.app:api", host=arguments.host, port=arguments.port)
