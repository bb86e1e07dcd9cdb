"""The command's inputs: the ``pkg.module:app`` to load, extra options, the env file."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._app import App
from ._broker import Broker
from ._brokers import BROKER_ENV, broker_from
from ._cli_output import CliError
from ._errors import ConfigurationError, describe
from ._lifespan import LifespanPlan

__all__ = [
    "DEFAULT_ENV_FILE",
    "broker_url",
    "env_file_for",
    "hook_options",
    "load_app",
    "make_broker",
    "parse_options",
    "plan_of",
]

DEFAULT_ENV_FILE = Path(".env")
USAGE = 2  # the exit status of a usage or configuration error


def load_app(target: str) -> App:
    """Import ``pkg.module:attribute`` (``:app`` when left out) and return the App it names.

    The current directory is importable, as under ``python -m``. Any failure is a CliError
    with exit status 2, in one line.
    """
    module_name, _, attribute = target.partition(":")
    attribute = attribute or "app"
    if not module_name or not all(part.isidentifier() for part in attribute.split(".")):
        raise CliError(
            f"{target!r}: expected pkg.module:app (a module path, a colon, a name)", USAGE
        )
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise CliError(
                f"cannot import {module_name!r}: no module named {missing!r} (run the command"
                " from the directory above the package, or set PYTHONPATH)",
                USAGE,
            ) from error
        raise CliError(f"importing {module_name!r} failed: {describe(error)}", USAGE) from error
    except Exception as error:
        raise CliError(f"importing {module_name!r} failed: {describe(error)}", USAGE) from error
    found: object = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise CliError(
                f"module {module_name!r} has no attribute {attribute!r}", USAGE
            ) from None
    if not isinstance(found, App):
        raise CliError(
            f"{module_name}:{attribute} is a {type(found).__name__}, not a di_lifespan App", USAGE
        )
    return found


def parse_options(arguments: Sequence[str]) -> dict[str, Any]:
    """Extra ``--name value``, ``--name=value`` and ``--flag`` arguments, by Python name.

    ``--model-path x`` gives ``{"model_path": "x"}``; a ``--flag`` followed by another option
    or by nothing is ``True``.
    """
    options: dict[str, Any] = {}
    position = 0
    while position < len(arguments):
        argument = arguments[position]
        position += 1
        if not argument.startswith("--") or argument == "--":
            raise CliError(
                f"unexpected argument {argument!r}: give extra options as --name value", USAGE
            )
        name, equals, value = argument[2:].partition("=")
        key = name.replace("-", "_")
        if not key.isidentifier():
            raise CliError(f"option {argument!r}: not a valid option name", USAGE)
        if equals:
            options[key] = value
        elif position < len(arguments) and not arguments[position].startswith("--"):
            options[key] = arguments[position]
            position += 1
        else:
            options[key] = True
    return options


def plan_of(app: App, **arguments: Any) -> LifespanPlan:
    """The plan the app's next run would follow (nothing starts); ConfigurationError as CliError."""
    try:
        return app._plan(**arguments)  # noqa: SLF001  # the CLI reads what a run would do
    except ConfigurationError as error:
        raise CliError(str(error), USAGE) from error


def hook_options(app: App) -> dict[str, list[str]]:
    """Each option name a hook of the app takes, with the hooks that take it."""
    taken: dict[str, list[str]] = {}
    for hooks in plan_of(app).hooks.values():
        for hook in hooks:
            for name in hook.options:
                taken.setdefault(name, []).append(hook.name)
    return taken


def env_file_for(app: App, given: Path | None) -> Path | None:
    """The env file the app's settings read this run.

    ``--env FILE`` when given (it must exist); else the app's own ``env_file``; else ``.env``
    in the current directory when there is one. None when the app has no settings class.
    """
    if given is not None and not given.is_file():
        problem = "is a directory, not a file" if given.is_dir() else "does not exist"
        raise CliError(f"--env {str(given)!r}: the file {problem}", USAGE)
    if app.settings is None:
        return None
    if given is not None:
        return given
    if app.env_file is None and DEFAULT_ENV_FILE.is_file():
        return DEFAULT_ENV_FILE
    return None


def broker_url(app: App, given: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The broker URL a run uses: ``--broker``, else ``DI_LIFESPAN_BROKER``, else the app's."""
    return given or environ.get(BROKER_ENV) or app.broker.url


def make_broker(url: str, where: str = "--broker") -> Broker:
    """The broker for a URL; a bad URL is a CliError (exit status 2)."""
    try:
        return broker_from(url)
    except ConfigurationError as error:
        raise CliError(f"{where} {url!r}: {error.problem}", USAGE) from error
