"""The store's inventory: orgs, clients and resources as the config describes them, synced
into their tables (the session rows copy their names at open: attribution is never joined)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Table, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tunnelacct.config.model import Config, ResourceConfig
from tunnelacct.config.orgs import configured_orgs
from tunnelacct.errors import StoreError
from tunnelacct.store.models import Client, Org, Resource, table_of

log = logging.getLogger(__name__)

T = TypeVar("T")


def insert_for(dialect_name: str, table: Table) -> sqlite.Insert | postgresql.Insert:
    """An INSERT that supports ON CONFLICT for the dialect (`sqlite` or `postgresql`)."""
    if dialect_name == "sqlite":
        return sqlite.insert(table)
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    raise StoreError(f"unsupported database dialect {dialect_name!r}")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _ports_text(resource: ResourceConfig) -> str | None:
    if resource.ports is None:
        return None
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in resource.ports)


def inventory_rows(config: Config, now: datetime) -> dict[Table, list[dict[str, Any]]]:
    """Rows for orgs, clients and resources as the config describes them (all active)."""
    orgs = [
        {
            "id": o.id,
            "name": o.name,
            "retention_days": o.retention_days,
            "logging": o.logging,
            "usage_retention_days": o.usage_retention_days,
            "updated_at": now,
        }
        for o in configured_orgs(config)
    ]
    clients = [
        {
            "id": c.id,
            "org_id": c.org,
            "name": c.name,
            "user_id": c.user,
            "addresses": json.dumps(list(c.addresses)),
            "public_key": c.public_key,
            "active": True,
            "updated_at": now,
        }
        for c in config.clients
    ]
    resources = [
        {
            "id": r.id,
            "org_id": r.org,
            "name": r.name,
            "address": r.address,
            "ports": _ports_text(r),
            "protocols": ",".join(p.label for p in r.protocols),
            "active": True,
            "updated_at": now,
        }
        for r in config.resources
    ]
    return {table_of(Org): orgs, table_of(Client): clients, table_of(Resource): resources}


async def _upsert_changed(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows, or update them by id when a value differs (then `updated_at` moves too)."""
    if not rows:
        return
    compared = [c for c in table.columns if c.name not in ("id", "updated_at")]
    stmt = insert_for(conn.dialect.name, table)
    excluded = stmt.excluded
    upsert = stmt.on_conflict_do_update(
        index_elements=[table.c.id],
        set_={c.name: excluded[c.name] for c in [*compared, table.c.updated_at]},
        where=or_(*(c.is_distinct_from(excluded[c.name]) for c in compared)),
    )
    await conn.execute(upsert, rows)  # executemany: compiled once, no bound-parameter limit


async def _deactivate_missing(
    conn: AsyncConnection, table: Table, keep: set[str], now: datetime
) -> int:
    """Mark active rows whose id is not in `keep` inactive; return how many."""
    active = set((await conn.scalars(select(table.c.id).where(table.c.active))).all())
    stale = sorted(active - keep)
    for chunk in _chunks(stale, 500):
        await conn.execute(
            update(table).where(table.c.id.in_(chunk)).values(active=False, updated_at=now)
        )
    return len(stale)


async def sync_inventory(
    engine: AsyncEngine, config: Config, *, now: datetime | None = None
) -> None:
    """Upsert orgs, clients and resources from `config` in one transaction.

    The default org gets a row too (clients may name it without declaring it). Clients and
    resources missing from the config are kept but marked inactive; orgs are kept as they are.
    Session records are never touched.
    """
    now = now or datetime.now(UTC)
    rows = inventory_rows(config, now)
    org_table, client_table, resource_table = table_of(Org), table_of(Client), table_of(Resource)
    try:
        async with engine.begin() as conn:
            known = set((await conn.scalars(select(org_table.c.id))).all())
            known |= {o.id for o in configured_orgs(config)}
            for kind, items in (("client", config.clients), ("resource", config.resources)):
                for item in items:
                    if item.org not in known:
                        raise StoreError(f"{kind} {item.id!r} names unknown org {item.org!r}")
            for table, table_rows in rows.items():
                await _upsert_changed(conn, table, table_rows)
            gone_clients = await _deactivate_missing(
                conn, client_table, {c.id for c in config.clients}, now
            )
            gone_resources = await _deactivate_missing(
                conn, resource_table, {r.id for r in config.resources}, now
            )
    except SQLAlchemyError as exc:
        raise StoreError(f"inventory sync failed: {exc}") from exc
    log.info(
        "inventory synced: %d orgs, %d clients, %d resources; deactivated %d clients, %d resources",
        len(rows[org_table]),
        len(config.clients),
        len(config.resources),
        gone_clients,
        gone_resources,
    )


async def sync_orgs(engine: AsyncEngine, config: Config, *, now: datetime | None = None) -> None:
    """Upsert only the orgs of `config` (names, retention, logging); for a running service's
    purge, which must not touch the clients and resources it attributes with."""
    rows = inventory_rows(config, now or datetime.now(UTC))[table_of(Org)]
    try:
        async with engine.begin() as conn:
            await _upsert_changed(conn, table_of(Org), rows)
    except SQLAlchemyError as exc:
        raise StoreError(f"org sync failed: {exc}") from exc


async def stored_org_ids(engine: AsyncEngine) -> set[str]:
    """Ids of every org the store knows (configured now or before)."""
    async with engine.connect() as db:
        return set((await db.execute(select(table_of(Org).c.id))).scalars())
