"""The ``di-lifespan`` command: its subcommands, their options, and how they fail.

Every failure prints one line, ``error: ...``, on stderr and exits non-zero: 2 for a usage or
configuration problem (a target that does not import, an unknown option, a bad URL), 1 for
anything else. ``--debug`` adds the traceback.
"""

from __future__ import annotations

import enum
import functools
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import anyio
import typer

from ._cli_describe import AppDescription, asyncapi_document, describe_app, mermaid, to_json
from ._cli_output import CliError, Output
from ._cli_serve import serve
from ._cli_target import (
    USAGE,
    broker_url,
    env_file_for,
    hook_options,
    load_app,
    make_broker,
    parse_options,
    plan_of,
)
from ._cli_tools import consume, parse_headers, parse_values, publish, serve_broker, tool_broker
from ._errors import DiLifespanError, describe
from ._kafka import EMBEDDED_SESSION_TIMEOUT_MS
from ._supervisor import WORKER_ENV, Supervisor

__all__ = ["app", "main"]

app = typer.Typer(
    name="di-lifespan",
    help="Run, inspect and talk to di_lifespan message services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class LogLevel(enum.StrEnum):
    """Log levels, by name."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"


Target = Annotated[
    str,
    typer.Argument(
        metavar="PKG.MODULE:APP",
        help="Where the App is: an importable module, a colon, the name (default: app).",
        show_default=False,
    ),
]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
BrokerUrl = Annotated[
    str | None,
    typer.Option(
        "--broker",
        help="Broker URL: kafka://host:port[?idempotent=false&session_timeout_ms=N],"
        " embedded:// or memory:// (default: DI_LIFESPAN_BROKER, else the app's own).",
        show_default=False,
    ),
]
ToolBroker = Annotated[
    str,
    typer.Option(
        "--broker",
        envvar="DI_LIFESPAN_BROKER",
        help="kafka://host:port[?options] of the running broker.",
        show_default=False,
    ),
]


def _guarded(command: Callable[..., int | None]) -> Callable[..., None]:
    """Run a command; report its failure as one line (a traceback with --debug) and exit."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        output = Output(debug=bool(kwargs.get("debug")), prefix=_worker_prefix())
        try:
            try:
                status = command(output, *args, **kwargs)
            except BaseExceptionGroup as group:
                raise _single(group) from group
        except (typer.Exit, typer.Abort):
            raise
        except CliError as error:
            output.error(error.message, error.__cause__ or error)
            _exit(error.code)
        except DiLifespanError as error:
            output.error(str(error), error)
            _exit(1)
        except KeyboardInterrupt:
            _exit(130)
        except Exception as error:  # noqa: BLE001  # any failure: one line, then exit 1
            output.error(describe(error), error)
            _exit(1)
        _exit(status or 0)

    # typer reads the parameters from the signature: all but the leading ``output``.
    signature = inspect.signature(command, eval_str=True)
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]  # read by typer
        parameters=list(signature.parameters.values())[1:]
    )
    return run


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside (nested) task groups' wrappers, or the group when there are more."""
    errors: list[BaseException] = [group]
    while len(errors) == 1 and isinstance(errors[0], BaseExceptionGroup):
        errors = list(errors[0].exceptions)
    return errors[0] if len(errors) == 1 else group


def _exit(status: int) -> NoReturn:
    raise typer.Exit(status)


def _worker_prefix() -> str:
    number = os.environ.get(WORKER_ENV)
    return f"worker {number}: " if number else ""


# --- run ---------------------------------------------------------------------------------


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Extra --name value options go to the hooks that take a parameter of that name"
    " (an option no hook takes is an error); so do --env, --broker and the others when given.",
)
@_guarded
def run(
    output: Output,
    ctx: typer.Context,
    target: Target,
    broker: BrokerUrl = None,
    env: Annotated[
        Path | None,
        typer.Option(
            "--env",
            help="Env file the settings class reads (default: .env when present).",
            show_default=False,
            dir_okay=True,
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Worker processes, one lifespan each.")
    ] = 1,
    log_level: Annotated[LogLevel, typer.Option("--log-level", case_sensitive=False)] = (
        LogLevel.INFO
    ),
    reload: Annotated[
        bool, typer.Option("--reload", help="Restart on changes of .py files (development).")
    ] = False,
    debug: Debug = False,
) -> int:
    """Run the app until SIGINT or SIGTERM: start, print the startup report, stop in order."""
    extras = parse_options(ctx.args)
    ours: dict[str, Any] = {
        "broker": broker,
        "env": None if env is None else str(env),
        "workers": workers,
        "log_level": log_level.value,
        "reload": reload,
        "debug": debug,
    }
    given = {
        name: value
        for name, value in ours.items()
        if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"
    }
    service = load_app(target)
    taken = hook_options(service)
    unknown = [name for name in extras if name not in taken]
    if unknown:
        offered = ", ".join(f"--{name.replace('_', '-')}" for name in sorted(taken)) or "none"
        raise CliError(
            f"option --{unknown[0].replace('_', '-')}: no hook of {target} takes a parameter"
            f" named {unknown[0]!r} (options its hooks take: {offered})",
            USAGE,
        )
    if env is not None and service.settings is None and "env" not in taken:
        output.warning(
            f"--env {str(env)!r}: ignored, the app has no settings class and no hook takes env"
        )
    # Checked here, before any process starts: each is a usage error (exit status 2).
    env_file = env_file_for(service, env)
    options = {**given, **extras}
    plan_of(service, env_file=env_file, options=options)  # an option value that does not convert
    chosen = None if broker is None else make_broker(broker)
    if workers > 1 or reload:
        worker_options = ["--log-level", log_level.value, *ctx.args]
        if env is not None:
            worker_options += ["--env", str(env)]
        if debug:
            worker_options.append("--debug")
        return _supervise(
            output,
            service=service,
            target=target,
            broker=broker,
            workers=workers,
            reload=reload,
            worker_options=worker_options,
            log_level=log_level.value,
        )
    output.configure_logging(log_level.value)
    return anyio.run(
        functools.partial(
            serve,
            service,
            output,
            broker=chosen,
            env_file=env_file,
            options=options,
        )
    )


def _supervise(
    output: Output,
    *,
    service: Any,
    target: str,
    broker: str | None,
    workers: int,
    reload: bool,
    worker_options: list[str],
    log_level: str,
) -> int:
    from ._embedded import EmbeddedKafka  # noqa: PLC0415  # only for embedded://

    url = broker_url(service, broker)
    scheme = urlsplit(url).scheme
    if scheme == "memory" and workers > 1:
        raise CliError(
            "--workers with the memory:// broker: each worker would have a broker of its own"
            " and they would share nothing; give --broker kafka://host:port or embedded://",
            USAGE,
        )
    output.configure_logging(log_level)
    command = [sys.executable, "-m", "di_lifespan.cli", "run", target, *worker_options]
    reload_dirs = [Path.cwd()] if reload else []
    if scheme != "embedded":
        if broker is not None:
            command += ["--broker", broker]
        return Supervisor(command, workers, reload_dirs=reload_dirs, say=output.info).run()
    # One broker for all workers (and across reloads), held by the parent.
    with EmbeddedKafka() as kafka:
        shared = (
            f"kafka://{kafka.bootstrap_servers}"
            f"?idempotent=false&session_timeout_ms={EMBEDDED_SESSION_TIMEOUT_MS}"
        )
        output.info(f"embedded broker at {shared}")
        command += ["--broker", shared]
        return Supervisor(command, workers, reload_dirs=reload_dirs, say=output.info).run()


# --- check, graph, asyncapi -----------------------------------------------------------------


def _describe(target: str) -> tuple[Any, AppDescription]:
    service = load_app(target)
    return service, describe_app(plan_of(service))


@app.command()
@_guarded
def check(output: Output, target: Target, debug: Debug = False) -> int:
    """Build and validate the app's graph without starting anything; list what it holds."""
    from rich.console import Console  # noqa: PLC0415  # stdout, only here
    from rich.markup import escape  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    _, description = _describe(target)
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    resources = Table("resource", "scope", "kind", "needs", title="resources", title_justify="left")
    for item in description.resources:
        resources.add_row(escape(item.name), item.scope, item.kind, escape(", ".join(item.needs)))
    console.print(resources)
    handlers = Table(
        "handler",
        "topics",
        "group",
        "publishes to",
        "dead letters to",
        "needs",
        title="handlers",
        title_justify="left",
    )
    for handler in description.handlers:
        handlers.add_row(
            escape(handler.name),
            ", ".join(handler.topics),
            handler.group or "-",
            ", ".join(handler.publishes) or "-",
            ", ".join(handler.dead_letter) or "-",
            escape(", ".join(handler.needs)),
        )
    console.print(handlers)
    if description.hooks:
        hooks = Table("hook", "stage", "needs", "options", title="hooks", title_justify="left")
        for hook in description.hooks:
            hooks.add_row(
                escape(hook.name),
                hook.stage,
                escape(", ".join(hook.needs)),
                ", ".join(f"--{name.replace('_', '-')}" for name in hook.options),
            )
        console.print(hooks)
    console.print(
        f"ok: {len(description.resources)} resources, {len(description.handlers)} handlers,"
        f" {len(description.hooks)} hooks; broker {description.broker}"
    )
    return 0


@app.command()
@_guarded
def graph(output: Output, target: Target, debug: Debug = False) -> int:
    """Print a Mermaid flowchart of the resources and the handlers that use them."""
    _, description = _describe(target)
    sys.stdout.write(mermaid(description))
    return 0


class Format(enum.StrEnum):
    """Output formats of the AsyncAPI document."""

    JSON = "json"
    YAML = "yaml"


@app.command()
@_guarded
def asyncapi(
    output: Output,
    target: Target,
    out: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write to this file (default: stdout).", dir_okay=False
        ),
    ] = None,
    format_: Annotated[
        Format | None,
        typer.Option("--format", help="json or yaml (default: from --output's suffix, else json)."),
    ] = None,
    title: Annotated[str | None, typer.Option(help="info.title (default: the module).")] = None,
    version: Annotated[str, typer.Option(help="info.version.")] = "0.1.0",
    debug: Debug = False,
) -> int:
    """Print an AsyncAPI 3.0 document of the app's topics, operations and message schemas."""
    _, description = _describe(target)
    module = sys.modules.get(target.partition(":")[0])
    about = (module.__doc__ or "").strip().split("\n\n")[0] if module is not None else ""
    document = asyncapi_document(
        description,
        title=title or target.partition(":")[0],
        version=version,
        about=" ".join(about.split()) or None,
    )
    chosen = format_ or (
        Format.YAML if out is not None and out.suffix in (".yaml", ".yml") else Format.JSON
    )
    if chosen is Format.YAML:
        try:
            import yaml  # type: ignore[import-untyped]  # noqa: PLC0415  # optional, untyped
        except ImportError:
            raise CliError("--format yaml needs PyYAML (pip install pyyaml)", USAGE) from None
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    else:
        text = to_json(document)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        output.info(f"wrote {out}")
    return 0


# --- publish, consume, broker ---------------------------------------------------------------


def _quiet_client(output: Output, *, debug: bool) -> None:
    """Warnings (ours: a broker that does not answer yet) and the client's critical errors only.

    An unreachable broker ends the command with one error line; ``--debug`` shows every record.
    """
    output.configure_logging("debug" if debug else "warning", client_level="critical")


@app.command(name="publish")
@_guarded
def publish_command(
    output: Output,
    topic: Annotated[str, typer.Argument(help="The topic to publish to.", show_default=False)],
    values: Annotated[
        list[str],
        typer.Argument(
            metavar="JSON...",
            help="Message bodies as JSON; - reads one per line of stdin.",
            show_default=False,
        ),
    ],
    broker: ToolBroker,
    key: Annotated[str | None, typer.Option("--key", help="The key of every message.")] = None,
    header: Annotated[
        list[str] | None, typer.Option("--header", help="A header name=value (repeatable).")
    ] = None,
    debug: Debug = False,
) -> int:
    """Publish messages (JSON bodies) to a topic and wait for the broker's acknowledgement."""
    target = tool_broker(broker)
    bodies = parse_values(values)
    headers = parse_headers(header or [])
    _quiet_client(output, debug=debug)
    anyio.run(functools.partial(publish, target, topic, bodies, key=key, headers=headers))
    output.info(f"published {len(bodies)} message{'s' * (len(bodies) != 1)} to {topic}")
    return 0


@app.command(name="consume")
@_guarded
def consume_command(
    output: Output,
    topics: Annotated[
        list[str], typer.Argument(metavar="TOPIC...", help="Topics to read.", show_default=False)
    ],
    broker: ToolBroker,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Read from the start of the log.")
    ] = False,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Stop after this many messages.")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="Stop after this many seconds."),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option("--group", help="Read as a member of this consumer group, committing."),
    ] = None,
    debug: Debug = False,
) -> int:
    """Print the messages of topics as JSON lines (from now on, or --from-beginning)."""
    target = tool_broker(broker)
    _quiet_client(output, debug=debug)

    def write(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    seen = anyio.run(
        functools.partial(
            consume,
            target,
            topics,
            from_beginning=from_beginning,
            group=group,
            count=count,
            within=timeout,
            write=write,
        )
    )
    if count is not None and seen < count:
        raise CliError(f"got {seen} of {count} messages within {timeout:g} s")
    return 0


@app.command(name="broker")
@_guarded
def broker_command(
    output: Output,
    port: Annotated[
        int | None, typer.Option("--port", min=1, max=65535, help="Port (default: a free one).")
    ] = None,
    debug: Debug = False,
) -> int:
    """Run an embedded Kafka-protocol broker (memory only) and print its kafka:// URL."""
    serve_broker(port, sys.stdout, output.info)
    return 0


def main() -> None:
    """The console script."""
    app()
