"""Addresses in networks as SQL: `network_clause(column, ip_version, network)` for the filter
language's `src:`/`dst:` terms (query/filters.py).

The address columns hold what the writer wrote (`flowkey.addr_text`, inet_ntop): `inet` on
PostgreSQL, the text itself on SQLite (models.IpAddress, migration 0005). A filter is built
before it meets its engine, so the clause is compiled per dialect: one exact inet comparison
on PostgreSQL (`postgres/addresses.py`), LIKE patterns on the text elsewhere
(`sqlite/addresses.py`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, ColumnElement
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from tunnelacct.sessions.flowkey import addr_text
from tunnelacct.store.postgres.addresses import inet_network_clause
from tunnelacct.store.sqlite.addresses import IpNetwork, text_network_clause

__all__ = ["IpNetwork", "network_clause"]


class _AddrIn(ColumnElement[bool]):
    """An address term compiled per dialect: `text_match` (LIKE SQL), or `inet_match` on
    PostgreSQL."""

    __visit_name__ = "tunnelacct_addr_in"
    inherit_cache = True
    _traverse_internals = [
        ("text_match", InternalTraversal.dp_clauseelement),
        ("inet_match", InternalTraversal.dp_clauseelement),
    ]
    type = Boolean()

    def __init__(self, text_match: ColumnElement[bool], inet_match: ColumnElement[bool]) -> None:
        self.text_match = text_match
        self.inet_match = inet_match


@compiles(_AddrIn)
def _addr_in_text(element: _AddrIn, compiler: SQLCompiler, **kw: Any) -> str:
    return "(" + compiler.process(element.text_match, **kw) + ")"


@compiles(_AddrIn, "postgresql")
def _addr_in_inet(element: _AddrIn, compiler: SQLCompiler, **kw: Any) -> str:
    return "(" + compiler.process(element.inet_match, **kw) + ")"


def network_clause(
    column: ColumnElement[str], ip_version: ColumnElement[int], network: IpNetwork
) -> ColumnElement[bool]:
    """Whether the address in `column` (models.IpAddress) lies in `network`.

    A /32 or /128 is one equality with the text the writer would have written (inet_ntop:
    dotted quads; RFC 5952 IPv6 with `::ffff:a.b.c.d` and `::a.b.c.d` for IPv4-embedded
    addresses), which PostgreSQL reads as an inet. A shorter prefix compiles per dialect.
    """
    if network.prefixlen == network.max_prefixlen:
        return column == addr_text(network.version, int(network.network_address))
    text_match = text_network_clause(column, ip_version, network)
    return _AddrIn(text_match, inet_network_clause(column, network))
