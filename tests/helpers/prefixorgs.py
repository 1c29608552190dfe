"""Orgs whose ids are prefixes of each other's (acm, acme, acme2), for the API, auth and fuzz
fixtures: scoping by prefix (a `startswith`, SQL `LIKE 'acme%'`) instead of equality lets one
org's token read another's data, and these make the tests see it (issue 15)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import create_engine, insert, pool, select

from tunnelacct.store.engine import sync_url

# "acme2" starts with "acme", and "acme" with "acm": one of them leaks under either direction
from tunnelacct.store.models import Client, Org, Resource, SessionRecord, table_of

# "acme2" starts with "acme", and "acme" with "acm": one of them leaks under either direction
# of a prefix test.
PREFIX_ORGS = ("acme2", "acm")


def add_prefix_orgs(url: str, like: str = "acme") -> None:
    """Add the PREFIX_ORGS to the store at `url`, each holding a copy of `like`'s sessions (new
    ids), clients and resources (ids suffixed with the org). Kept forever, so that purges skip
    them, and not in any config file: the API sets their retention."""
    orgs, clients, resources, sessions = (
        table_of(model) for model in (Org, Client, Resource, SessionRecord)
    )
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            like_clients = conn.execute(select(clients).where(clients.c.org_id == like))
            like_resources = conn.execute(select(resources).where(resources.c.org_id == like))
            like_sessions = conn.execute(select(sessions).where(sessions.c.org_id == like))
            client_rows = like_clients.mappings().all()
            resource_rows = like_resources.mappings().all()
            session_rows = like_sessions.mappings().all()
            assert client_rows and resource_rows and session_rows, f"{like} has no data to copy"
            for org in PREFIX_ORGS:
                conn.execute(
                    insert(orgs).values(
                        id=org,
                        name=org.title(),
                        retention_days=None,
                        updated_at=datetime(2026, 1, 1, tzinfo=UTC),
                        logging=True,
                    )
                )
                conn.execute(
                    insert(clients),
                    [{**row, "id": f"{row['id']}-{org}", "org_id": org} for row in client_rows],
                )
                conn.execute(
                    insert(resources),
                    [{**row, "id": f"{row['id']}-{org}", "org_id": org} for row in resource_rows],
                )
                # the same days as `like`'s sessions: their partitions exist on PostgreSQL
                conn.execute(
                    insert(sessions),
                    [{**row, "id": uuid.uuid4(), "org_id": org} for row in session_rows],
                )
    finally:
        engine.dispose()
