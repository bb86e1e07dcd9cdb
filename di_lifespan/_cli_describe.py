"""``check``, ``graph`` and ``asyncapi``: what an app is made of, read without starting it.

The container is built exactly as a run builds it (so dishka validates the graph and every
handler's and hook's dependencies are checked) but no resource is created, no hook runs and
no broker is contacted.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import anyio
from dishka import AsyncContainer
from dishka.entities.factory_type import FactoryType
from dishka.registry import Registry
from pydantic import TypeAdapter

from ._delivery import DEAD_LETTER_HEADERS, Outgoing
from ._graph import key_name
from ._handlers import HandlerSpec
from ._hooks import function_name, open_parameters
from ._lifespan import LifespanPlan, LifespanRun

__all__ = ["AppDescription", "asyncapi_document", "describe_app", "mermaid"]

_KINDS = {
    FactoryType.FACTORY: "factory",
    FactoryType.ASYNC_FACTORY: "factory",
    FactoryType.GENERATOR: "generator (finalizer)",
    FactoryType.ASYNC_GENERATOR: "generator (finalizer)",
    FactoryType.CONTEXT: "context",
    FactoryType.VALUE: "value",
    FactoryType.ALIAS: "alias",
    FactoryType.SELECTOR: "selector",
    FactoryType.COLLECTION: "collection",
}
_FRAMEWORK = ("Publisher", "Message")  # context the app itself provides to every container


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    """One type the container provides."""

    name: str
    scope: str
    kind: str
    needs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    """One subscriber: where it reads, what it needs, where its results and failures go."""

    name: str
    topics: tuple[str, ...]
    group: str | None
    publishes: tuple[str, ...]
    dead_letter: tuple[str, ...]
    needs: tuple[str, ...]
    body: Any  # the body's annotation; None without a body parameter
    returns: Any  # the return annotation; None when not annotated
    attempts: int
    max_concurrency: int


@dataclass(frozen=True, slots=True)
class HookInfo:
    """One lifespan hook: its stage, what it needs, which options it takes."""

    stage: str
    name: str
    needs: tuple[str, ...]
    options: tuple[str, ...]


@dataclass(slots=True)
class AppDescription:
    """An app's resources, handlers, publishing functions and hooks, as a run would see them."""

    resources: list[ResourceInfo] = field(default_factory=list)
    handlers: list[HandlerInfo] = field(default_factory=list)
    senders: list[tuple[str, tuple[str, ...], Any]] = field(default_factory=list)
    hooks: list[HookInfo] = field(default_factory=list)
    broker: str = ""


def describe_app(plan: LifespanPlan) -> AppDescription:
    """Build the plan's container as a run does (raising what its startup would); read it."""
    return anyio.run(_describe, plan)


async def _describe(plan: LifespanPlan) -> AppDescription:
    run = LifespanRun(plan)
    failure: Exception | None = None
    async with anyio.create_task_group() as tasks:
        try:
            # The run's own first step: builds and checks everything, starts nothing.
            run._build(tasks)  # noqa: SLF001  # the same checks as a start, by construction
        except Exception as error:  # noqa: BLE001  # raised below, outside the task group
            failure = error
    if failure is not None:
        raise failure
    container = run.container
    assert container is not None  # noqa: S101  # set by _build
    try:
        return AppDescription(
            resources=list(_resources(container)),
            handlers=[_handler(spec) for spec in plan.handlers],
            senders=[
                (function_name(item.func), tuple(item.topics), _returns(item.func))
                for item in plan.publishing
            ],
            hooks=[
                HookInfo(
                    stage,
                    function_name(hook.func),
                    tuple(key_name(key) for key in hook.dependencies.values()),
                    tuple(hook.options),
                )
                for stage, hooks in plan.hooks.items()
                for hook in hooks
            ],
            broker=plan.broker.url,
        )
    finally:
        await container.close()


def _resources(container: AsyncContainer) -> Iterable[ResourceInfo]:
    root = container
    while root.parent_container is not None:
        root = root.parent_container
    registry: Registry | None = root.registry
    while registry is not None:
        for key, factory in registry.factories.items():
            if key.type_hint is AsyncContainer or key.is_marker() or key.depth:
                continue
            needs = [
                key_name(dependency)
                for dependency in (*factory.dependencies, *factory.kw_dependencies.values())
                if not dependency.is_marker() and dependency.type_hint is not AsyncContainer
            ]
            kind = _KINDS.get(factory.type, str(factory.type))
            if factory.type is FactoryType.ALIAS and needs:
                kind, needs = f"alias of {needs[0]}", []
            elif not factory.cache and factory.type is not FactoryType.CONTEXT:
                kind += ", not cached"
            yield ResourceInfo(key_name(key), registry.scope.name, kind, tuple(needs))
        registry = registry.child_registry


def _handler(spec: HandlerSpec) -> HandlerInfo:
    body: Any = None
    if spec.signature.body is not None:
        _, hints = open_parameters(spec.func, spec.name)
        body = hints.get(spec.signature.body, Any)
    return HandlerInfo(
        name=spec.name,
        topics=spec.topics,
        group=spec.group,
        publishes=tuple(spec.publish_to),
        dead_letter=tuple(
            spec.dead_letter.replace("{topic}", topic) for topic in spec.topics if spec.dead_letter
        ),
        needs=tuple(key_name(key) for key in spec.signature.dependencies.values()),
        body=body,
        returns=_returns(spec.func) if spec.publish_to else None,
        attempts=spec.retry.attempts if spec.retry is not None else 1,
        max_concurrency=spec.max_concurrency,
    )


def _returns(func: Any) -> Any:
    try:
        hints = get_type_hints(func)
    except (NameError, TypeError):
        return None
    return hints.get("return")


# --- graph -------------------------------------------------------------------------------


def mermaid(description: AppDescription) -> str:
    """A Mermaid flowchart: resources by scope, handlers, the topics they read and write."""
    ids: dict[tuple[str, str], str] = {}

    def node(kind: str, name: str) -> str:
        if (kind, name) not in ids:
            ids[(kind, name)] = f"{kind}{len(ids)}_{re.sub(r'[^0-9A-Za-z_]', '_', name)[:40]}"
        return ids[(kind, name)]

    used = {need for item in description.resources for need in item.needs}
    used |= {need for handler in description.handlers for need in handler.needs}
    lines = ["flowchart LR"]
    scopes: dict[str, list[ResourceInfo]] = {}
    for item in description.resources:
        if item.name in _FRAMEWORK and item.name not in used:
            continue
        scopes.setdefault(item.scope, []).append(item)
    for scope, items in scopes.items():
        lines.append(f"  subgraph {scope}")
        lines += [f'    {node("r", item.name)}["{_label(item.name)}"]' for item in items]
        lines.append("  end")
    for item in (item for items in scopes.values() for item in items):
        lines += [f"  {node('r', need)} --> {node('r', item.name)}" for need in item.needs]
    for handler in description.handlers:
        handler_node = f'{node("h", handler.name)}{{{{"{_label(handler.name)}"}}}}'
        lines.append(f"  {handler_node}")
        lines += [
            f'  {node("t", topic)}[/"{_label(topic)}"/] --> {node("h", handler.name)}'
            for topic in handler.topics
        ]
        lines += [f"  {node('r', need)} --> {node('h', handler.name)}" for need in handler.needs]
        lines += [
            f'  {node("h", handler.name)} --> {node("t", topic)}[/"{_label(topic)}"/]'
            for topic in handler.publishes
        ]
        lines += [
            f'  {node("h", handler.name)} -. failed .-> {node("t", topic)}[/"{_label(topic)}"/]'
            for topic in handler.dead_letter
        ]
    for name, topics, _ in description.senders:
        lines.append(f'  {node("f", name)}(["{_label(name)}"])')
        lines += [f'  {node("f", name)} --> {node("t", t)}[/"{_label(t)}"/]' for t in topics]
    return "\n".join(lines) + "\n"


def _label(text: str) -> str:
    return text.replace('"', "#quot;")


# --- AsyncAPI ----------------------------------------------------------------------------

ASYNCAPI_VERSION = "3.0.0"
_KAFKA_BINDING_VERSION = "0.5.0"


class _Components:
    """``components``: message and schema objects, each type's schema once."""

    def __init__(self) -> None:
        self.messages: dict[str, dict[str, Any]] = {}
        self.schemas: dict[str, Any] = {}
        self._schema_refs: dict[Any, dict[str, Any]] = {}
        self._message_ids: dict[tuple[str, str, bool], str] = {}

    def message(self, name: str, payload_type: Any, *, headers: Any = None) -> str:
        """The id of a message named after ``name`` (made unique), registered once."""
        seen = (name, repr(payload_type), headers is not None)
        if seen in self._message_ids:
            return self._message_ids[seen]
        message_id = self._message_ids[seen] = _unique(_identifier(name), self.messages)
        message: dict[str, Any] = {"name": message_id, "contentType": _content_type(payload_type)}
        payload = self.payload(payload_type)
        if payload is not None:
            message["payload"] = payload
        if headers is not None:
            message["headers"] = headers
        self.messages[message_id] = message
        return message_id

    def payload(self, type_hint: Any) -> dict[str, Any] | None:
        """A schema (a ``$ref`` for a model) for a body type; None for any body."""
        if type_hint is None or type_hint is Any:
            return None
        if type_hint in self._schema_refs:
            return self._schema_refs[type_hint]
        schema = TypeAdapter(type_hint).json_schema(ref_template="#/components/schemas/{model}")
        self.schemas.update(schema.pop("$defs", {}))
        if schema.get("type") == "object" and "title" in schema:
            name = _unique(_identifier(schema["title"]), self.schemas)
            self.schemas[name] = schema
            schema = {"$ref": f"#/components/schemas/{name}"}
        self._schema_refs[type_hint] = schema
        return schema


def asyncapi_document(
    description: AppDescription, *, title: str, version: str, about: str | None = None
) -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the app's topics (channels), handlers and publishers."""
    components = _Components()
    channels: dict[str, dict[str, Any]] = {}
    operations: dict[str, dict[str, Any]] = {}

    def add(
        action: str, operation: str, topic: str, message_id: str, extra: dict[str, Any]
    ) -> None:
        channel_id = _identifier(topic)
        channel = channels.setdefault(channel_id, {"address": topic, "messages": {}})
        channel["messages"][message_id] = {"$ref": f"#/components/messages/{message_id}"}
        operations[_unique(_identifier(operation), operations)] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_id}"}],
            **extra,
        }

    dead_letter_headers = {
        "type": "object",
        "description": "set on a message dead-lettered after its handler failed",
        "properties": {name: {"type": "string"} for name in DEAD_LETTER_HEADERS.values()},
    }
    for handler in description.handlers:
        body = _payload_type(handler.body)
        received = components.message(_type_name(body, f"{handler.name}.input"), body)
        bindings: dict[str, Any] = {}
        if handler.group is not None:
            bindings = {
                "bindings": {
                    "kafka": {
                        "groupId": {"type": "string", "enum": [handler.group]},
                        "bindingVersion": _KAFKA_BINDING_VERSION,
                    }
                }
            }
        for topic in handler.topics:
            summary = {"summary": f"handled by {handler.name}", **bindings}
            add("receive", f"{handler.name}.receive.{topic}", topic, received, summary)
        if handler.publishes:
            returned = _payload_type(handler.returns)
            sent = components.message(_type_name(returned, f"{handler.name}.output"), returned)
            for topic in handler.publishes:
                summary = {"summary": f"what {handler.name} returns"}
                add("send", f"{handler.name}.send.{topic}", topic, sent, summary)
        if handler.dead_letter:
            failed = components.message(
                f"{_type_name(body, handler.name)}.dead_letter", body, headers=dead_letter_headers
            )
            for topic in handler.dead_letter:
                summary = {
                    "summary": f"messages {handler.name} failed on after {handler.attempts}"
                    " attempt(s), with the error in headers"
                }
                add("send", f"{handler.name}.dead_letter.{topic}", topic, failed, summary)
    for name, topics, returns in description.senders:
        returned = _payload_type(returns)
        sent = components.message(_type_name(returned, f"{name}.output"), returned)
        for topic in topics:
            add("send", f"{name}.send.{topic}", topic, sent, {"summary": f"what {name} returns"})
    info: dict[str, Any] = {"title": title, "version": version}
    if about:
        info["description"] = about
    document: dict[str, Any] = {"asyncapi": ASYNCAPI_VERSION, "info": info}
    servers = _servers(description.broker)
    if servers:
        document["servers"] = servers
    document |= {
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": components.messages, "schemas": components.schemas},
    }
    return document


def _servers(url: str) -> dict[str, Any]:
    if not url.startswith("kafka://"):
        return {}
    hosts = url.removeprefix("kafka://").split("?")[0].split(",")
    return {
        f"kafka{number}" if len(hosts) > 1 else "kafka": {"host": host, "protocol": "kafka"}
        for number, host in enumerate(hosts, start=1)
    }


def _payload_type(type_hint: Any) -> Any:
    """The type of what is sent: Optional[X] is X (None publishes nothing); Outgoing is any."""
    if type_hint is None or type_hint is type(None):
        return None
    if typing.get_origin(type_hint) in (typing.Union, types.UnionType):
        kept = [arg for arg in typing.get_args(type_hint) if arg is not type(None)]
        type_hint = kept[0] if len(kept) == 1 else typing.Union[tuple(kept)]  # noqa: UP007  # built at run time
    if type_hint is Outgoing:
        return Any
    return type_hint


def _type_name(type_hint: Any, fallback: str) -> str:
    if type_hint is None or type_hint is Any:
        return fallback
    return getattr(type_hint, "__name__", None) or fallback


def _content_type(type_hint: Any) -> str:
    return "application/octet-stream" if type_hint is bytes else "application/json"


def _identifier(name: str) -> str:
    """A name fit for an AsyncAPI map key: letters, digits, ``.``, ``-`` and ``_``."""
    return re.sub(r"[^\w.\-]", "_", name) or "_"


def _unique(name: str, taken: dict[str, Any]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    return candidate


def to_json(document: dict[str, Any]) -> str:
    """The document as indented JSON."""
    return json.dumps(document, indent=2) + "\n"
