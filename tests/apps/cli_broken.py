"""Apps that cannot start, for ``di-lifespan check``: a handler and a resource lacking providers."""

from __future__ import annotations

from di_lifespan import App, FromDishka, Provider, Scope, provide


class Database:
    """Nobody provides it."""


class Ledger:
    """Provided, but from a Database nobody provides."""


class Accounts:
    """Nobody provides it either."""


class Books(Provider):
    @provide(scope=Scope.APP)
    def ledger(self, database: Database) -> Ledger:
        return Ledger()


handler_app = App()


@handler_app.subscriber("payments")
async def pay(body: bytes, accounts: FromDishka[Accounts]) -> None:
    """Needs Accounts, which no provider gives."""


resource_app = App(Books())

not_an_app = "a string"
