"""FastAPI and Starlette: HTTP routes served from the app's container, in the app's process.

The ASGI app runs the di_lifespan app's lifespan (``lifespan=app.asgi_lifespan``), and
``setup_dishka(app, asgi_app)`` opens a dishka REQUEST scope of that container for each HTTP
request (a SESSION scope for each WebSocket), where dishka's own FastAPI integration looks
for it::

    from dishka.integrations.fastapi import DishkaRoute, FromDishka
    from fastapi import APIRouter, FastAPI

    from di_lifespan import App
    from di_lifespan.fastapi import setup_dishka

    app = App(Resources())
    router = APIRouter(route_class=DishkaRoute)


    @router.get("/model")
    async def describe(model: FromDishka[Model]) -> dict[str, str]: ...


    api = FastAPI(lifespan=app.asgi_lifespan)
    api.include_router(router)
    setup_dishka(app, api)

The container is looked up for each request, not captured at setup: the same ASGI app
serves whichever run of the app is under way, the one its ASGI lifespan started or a
``TestClient`` of a test. A request that arrives while the app is not running gets
503 Service Unavailable (a WebSocket is closed with code 1013, try again later).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dishka import Scope
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketClose

from ._app import App
from ._errors import ConfigurationError
from ._lifespan import AppStatus

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.types import ASGIApp, Receive, Send
    from starlette.types import Scope as ASGIScope

__all__ = ["setup_dishka"]

_TRY_AGAIN_LATER = 1013  # the WebSocket close code for a service that is not available now


def setup_dishka(app: App, asgi_app: Starlette) -> None:
    """Serve ``asgi_app``'s routes from ``app``'s container while ``app`` runs.

    Adds a middleware that opens a REQUEST scope of ``app.container`` for each HTTP request
    (a SESSION scope for each WebSocket), with the starlette ``Request`` (or ``WebSocket``) in
    its context, as ``dishka.integrations.fastapi.setup_dishka`` does for a container of its
    own. Routes then take ``FromDishka[...]`` parameters through dishka's ``DishkaRoute`` or
    ``inject``. Call it while building the ASGI app: middleware cannot be added once it runs.
    """
    if not isinstance(app, App):
        raise ConfigurationError(
            "setup_dishka(app, ...)", f"expected a di_lifespan App, got {app!r}"
        )
    asgi_app.add_middleware(_RequestScopes, service=app)


class _RequestScopes:
    """ASGI middleware: each HTTP request (WebSocket) in a REQUEST (SESSION) scope of the app."""

    def __init__(self, asgi: ASGIApp, *, service: App) -> None:
        self._asgi = asgi
        self._service = service

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self._asgi(scope, receive, send)
            return
        status = self._service.status
        if status is not AppStatus.RUNNING:
            refusal: Any = (
                PlainTextResponse(f"the app is {status}, not serving", status_code=503)
                if kind == "http"
                else WebSocketClose(_TRY_AGAIN_LATER, f"the app is {status}")
            )
            await refusal(scope, receive, send)
            return
        connection: Request | WebSocket
        if kind == "http":
            connection = Request(scope, receive, send)
            context: dict[Any, Any] = {Request: connection}
            dishka_scope = Scope.REQUEST
        else:
            connection = WebSocket(scope, receive, send)
            context = {WebSocket: connection}
            dishka_scope = Scope.SESSION
        async with self._service.container(context, scope=dishka_scope) as container:
            # Where dishka's FastAPI and Starlette integrations look for the request's container.
            connection.state.dishka_container = container
            await self._asgi(scope, receive, send)
