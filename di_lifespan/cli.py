"""The ``di-lifespan`` command line (``python -m di_lifespan.cli`` runs it too).

``app`` is the typer application (click underneath), ``main`` the console script's entry point.
Commands: ``run``, ``check``, ``graph``, ``asyncapi``, ``publish``, ``consume``, ``broker``;
``di-lifespan COMMAND --help`` describes each, and docs/cli.md shows them at work.
"""

from ._cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
