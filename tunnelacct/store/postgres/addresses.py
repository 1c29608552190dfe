"""Addresses in networks on PostgreSQL: one exact test on the `inet` column (store/addresses.py)."""

from __future__ import annotations

from sqlalchemy import ColumnElement, String, cast
from sqlalchemy.dialects.postgresql import INET
from sqlalchemy.sql.expression import literal

from tunnelacct.store.sqlite.addresses import IpNetwork


def inet_network_clause(column: ColumnElement[str], network: IpNetwork) -> ColumnElement[bool]:
    """`column <<= CAST(:network AS INET)`: whether the inet in `column` lies in `network`.

    PostgreSQL's inet never mixes families (10.0.0.0/8 does not contain ::ffff:a00:1), the rule
    of the text patterns too. A GiST index with inet_ops could serve it; there is none, callers
    scope by org and time, whose index does the narrowing.
    """
    return column.op("<<=", is_comparison=True)(cast(literal(str(network), String), INET))
