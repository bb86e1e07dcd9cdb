"""A throwaway PostgreSQL server: a fresh cluster in a temporary directory, on a free port.

For the demo and the tests. It needs the server binaries (``initdb``, ``pg_ctl``; Debian's
``postgresql`` package puts them under ``/usr/lib/postgresql/<version>/bin``). PostgreSQL
refuses to run as root: as root, the server runs as the ``postgres`` user (or ``nobody``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PostgresNotFoundError", "find_binaries", "throwaway_postgres"]

_NEEDED = ("initdb", "pg_ctl", "postgres")


class PostgresNotFoundError(RuntimeError):
    """No PostgreSQL server binaries on this machine."""

    def __init__(self) -> None:
        super().__init__(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or under"
            " /usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql)"
        )


def find_binaries() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: the newest version's, else PATH's."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in versions:
        if all((directory / name).is_file() for name in _NEEDED):
            return directory
    found = [shutil.which(name) for name in _NEEDED]
    if all(found):
        return Path(str(found[0])).resolve().parent
    return None


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a PostgreSQL server; yield its DSN; stop it and delete its files on exit."""
    binaries = find_binaries()
    if binaries is None:
        raise PostgresNotFoundError
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="di_lifespan_pg_"))
    port = _free_port()
    try:
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        data = root / "data"
        _run(user, binaries / "initdb", "-D", data, "-U", "postgres", "--auth=trust")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = root / "log"
        _run(user, binaries / "pg_ctl", "-D", data, "-l", log, "-w", "-o", options, "start")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            _run(user, binaries / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None for the current user, unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("PostgreSQL refuses to run as root, and there is no postgres user")


def _run(user: pwd.struct_passwd | None, *command: str | Path) -> None:
    result = subprocess.run(  # noqa: S603  # our own arguments, no shell
        [str(part) for part in command],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        user=None if user is None else user.pw_uid,
        group=None if user is None else user.pw_gid,
        extra_groups=None if user is None else [],
    )
    if result.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed: {result.stderr or result.stdout}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
