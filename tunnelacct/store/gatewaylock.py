"""The gateway lock: one `tunnelacct serve` per store and gateway name (issue 16).

A second serve with the same gateway name on the same store would resume the first one's
ongoing sessions, close them, and race it for their rows. So serve takes this lock before it
touches a session, holds it until it stops, and refuses to start while another process has it,
naming that process.

- SQLite (one host): an exclusive `flock` on a file beside the database,
  `<database>.serve-<gateway as UTF-8 hex>.lock`, holding the holder's description. The kernel
  frees it when the holder dies, however it dies; the file itself stays and is reused.
- PostgreSQL (any host): a session-level advisory lock on a connection held for the service's
  life, keyed by a 64-bit hash of the gateway name. The server frees it when that connection
  ends (the process died, or the connection was lost). The holder is named by the
  `application_name` of the connection that holds it (pg_locks joined with
  pg_stat_activity).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tunnelacct.errors import StoreError, TunnelacctError

log = logging.getLogger(__name__)

_SIGNED_64 = 1 << 63


class GatewayInUse(TunnelacctError):
    """Another process serves this gateway on this store: named in the message."""

    def __init__(self, gateway: str, holder: str) -> None:
        self.gateway = gateway
        self.holder = holder
        super().__init__(
            f"gateway {gateway!r} is already served on this store by {holder}: stop that "
            "process first, or give this one another [gateway] name"
        )


def describe_holder(gateway: str, now: datetime) -> str:
    """Who takes the lock: `tunnelacct serve gw1, pid 1234 on host gw (since <UTC time>)`."""
    since = now.astimezone(UTC).isoformat(timespec="seconds")
    host = socket.gethostname()
    return f"tunnelacct serve {gateway}, pid {os.getpid()} on host {host} (since {since})"


def advisory_key(gateway: str) -> int:
    """The PostgreSQL advisory lock key of `gateway`: a signed 64-bit hash of its name."""
    digest = hashlib.blake2b(f"tunnelacct serve {gateway}".encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "big")
    return value - (1 << 64) if value >= _SIGNED_64 else value


def lock_path(database: str, gateway: str) -> Path:
    """The SQLite lock file of `gateway` beside the database file `database`."""
    return Path(f"{database}.serve-{gateway.encode().hex()}.lock")


class GatewayLock:
    """Held by serve for its whole life: `await acquire(now)`, then `await release()`."""

    def __init__(self, engine: AsyncEngine, gateway: str) -> None:
        self._engine = engine
        self.gateway = gateway
        self._fd: int | None = None  # SQLite: the locked file
        self._conn: AsyncConnection | None = None  # PostgreSQL: holds the advisory lock

    async def acquire(self, now: datetime) -> None:
        """Take the lock; raises GatewayInUse naming the holder when another process has it."""
        holder = describe_holder(self.gateway, now)
        if self._engine.dialect.name == "postgresql":
            await self._acquire_advisory(holder)
        else:
            self._acquire_file(holder)
        log.info("gateway %r is served by this process (%s)", self.gateway, holder)

    def _acquire_file(self, holder: str) -> None:
        database = self._engine.url.database
        if not database or database == ":memory:":
            return  # a private in-memory store: nobody else can reach it
        path = lock_path(database, self.gateway)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise StoreError(f"cannot open the gateway lock {path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise GatewayInUse(self.gateway, other or "another process") from None
        except OSError as e:
            os.close(fd)
            raise StoreError(f"cannot lock {path}: {e.strerror or e}") from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        self._fd = fd

    async def _acquire_advisory(self, holder: str) -> None:
        key = advisory_key(self.gateway)
        conn = await self._engine.connect()
        try:
            # application_name is how another process finds out who holds the lock; PostgreSQL
            # keeps 63 bytes of it
            await conn.execute(
                text("SELECT set_config('application_name', :name, false)"),
                {"name": holder[:63]},
            )
            got = (
                await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
            ).scalar_one()
            await conn.commit()  # session-level: idle, not idle in a transaction
            if not got:
                other = await _advisory_holder(conn, key)
                raise GatewayInUse(self.gateway, other)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def release(self) -> None:
        """Free the lock; idempotent. Failures are logged: ending the connection or the process
        frees it anyway."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()  # the session ends: PostgreSQL frees its advisory locks
            except (SQLAlchemyError, OSError) as e:
                log.warning("gateway lock: closing its connection failed: %s", e)


async def _advisory_holder(conn: AsyncConnection, key: int) -> str:
    """Who holds advisory lock `key`: its connection's application_name and address."""
    unsigned = key + (1 << 64) if key < 0 else key
    row: Any = (
        await conn.execute(
            text(
                "SELECT a.application_name, a.client_addr, a.pid FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                "AND l.granted AND l.classid = :high AND l.objid = :low AND l.objsubid = 1"
            ),
            {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF},
        )
    ).first()
    await conn.commit()
    if row is None:
        return "another process (it may just have stopped: try again)"
    name, address, pid = row
    where = f" from {address}" if address is not None else ""
    return f"{name or 'a client'} (server pid {pid}{where})"
