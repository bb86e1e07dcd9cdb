"""Settings from an env file chosen at start, and hooks of each kind around the lifespan.

``python -m examples.settings [--env FILE]`` runs the demo; ``app`` (in
``examples.settings.app``) is the service, ``create_app(env_file)`` makes one that reads
another file.
"""
