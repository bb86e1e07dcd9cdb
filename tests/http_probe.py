"""A raw HTTP/1.0 client for the health server's tests: one request per connection."""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from di_lifespan import App

WAIT = 10.0  # seconds a wait_for_... gives the server


@dataclass(frozen=True)
class Answer:
    """A response: status code, headers (lower-cased names), body as text."""

    status: int
    headers: dict[str, str]
    body: str


async def send_raw(address: tuple[str, int], data: bytes) -> bytes:
    """Send ``data`` on a new connection; return everything the server sent until it closed."""
    async with await anyio.connect_tcp(*address) as stream:
        await stream.send(data)
        received = b""
        try:
            async for chunk in stream:
                received += chunk
        except anyio.BrokenResourceError:
            pass  # reset after the answer: what came is the answer
        return received


def parse(raw: bytes) -> Answer:
    """Split a response into status, headers and body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body.decode())


async def get(app: App, path: str, method: str = "GET") -> Answer:
    """``method path`` on the app's health port."""
    address = app.health_address
    assert address is not None, "the app serves no health port"
    return parse(await send_raw(address, f"{method} {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode()))


async def wait_for_status(app: App, path: str, status: int) -> Answer:
    """Poll ``path`` until it answers ``status``; fail after WAIT seconds."""
    with anyio.fail_after(WAIT):
        while True:
            answer = await get(app, path)
            if answer.status == status:
                return answer
            await anyio.sleep(0.02)


async def wait_for_address(app: App) -> tuple[str, int]:
    """Wait until the starting app listens on its health port; return the address."""
    with anyio.fail_after(WAIT):
        while (address := app.health_address) is None:  # noqa: ASYNC110  # no event to wait on
            await anyio.sleep(0.005)
    return address
