"""The session filter language: `parse_filter(text) -> Filter`, `filter_clause(flt, table)`.

A filter is space-separated terms, all ANDed; a value holding spaces is double-quoted::

    protocol:tcp client:"bob laptop" dst:10.99.0.0/24 dport:8000-8100 -status:ongoing bytes>10M

`parse_filter` is pure (no SQL) and raises `FilterError(token, expected)` for the first bad
term. `filter_clause` turns a `Filter` into one parameterised SQLAlchemy expression on the
sessions table, so the database does all the filtering and the (org_id, started_at, id),
(org_id, client_id, started_at, id) and (org_id, resource_id, started_at, id) indexes apply to
the `started_*`, `client:` and `resource:` terms of an org-scoped query: the latter two hold a
client's or a resource's sessions in a page's order (migration 0014).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, false, literal_column, not_, true

from tunnelacct.enums import CloseReason, IpProto, SessionStatus
from tunnelacct.errors import FilterError
from tunnelacct.store.addresses import IpNetwork, network_clause


@dataclass(frozen=True, slots=True)
class Match:
    """`key:value` equality on a text column (protocol, client, user, resource, status, ...)."""

    key: str
    value: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class InNetwork:
    """`src:`/`dst:` address inside a network (a bare address is a /32 or /128)."""

    key: str
    network: IpNetwork
    negated: bool = False


@dataclass(frozen=True, slots=True)
class PortIn:
    """`sport:`/`dport:` port in the inclusive range lo..hi."""

    key: str
    lo: int
    hi: int
    negated: bool = False


@dataclass(frozen=True, slots=True)
class StartedAt:
    """`started_after:` (started_at >= at) or `started_before:` (started_at < at); `at` is UTC."""

    key: str
    at: datetime
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Compare:
    """`bytes>N`, `bytes<N` (bytes_tx + bytes_rx) or `duration>S`, `duration<S` (seconds)."""

    key: str
    op: str
    value: int | float
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Flag:
    """`estimated:true|false`, `incomplete:true|false`: a boolean column is `value`."""

    key: str
    value: bool
    negated: bool = False


Term = Match | InNetwork | PortIn | StartedAt | Compare | Flag


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter: the conjunction of its terms (no terms: every session)."""

    terms: tuple[Term, ...] = ()


# --- parsing --------------------------------------------------------------------------------


class _Bad(ValueError):
    """A value that does not parse; `parse_filter` turns it into a FilterError for the term."""


def _choice(values: tuple[str, ...]) -> Callable[[str, str, str, bool], Term]:
    def parse(key: str, _op: str, value: str, negated: bool) -> Term:
        if value.lower() not in values:
            raise _Bad(value)
        return Match(key, value.lower(), negated)

    return parse


def _text(key: str, _op: str, value: str, negated: bool) -> Term:
    if not value:
        raise _Bad(value)
    return Match(key, value, negated)


_FLAG_VALUES = {"true": True, "false": False}


def _flag(key: str, _op: str, value: str, negated: bool) -> Term:
    flag = _FLAG_VALUES.get(value.lower())
    if flag is None:
        raise _Bad(value)
    return Flag(key, flag, negated)


def _network(key: str, _op: str, value: str, negated: bool) -> Term:
    if "%" in value:  # a zone id (fe80::1%wg0): stored addresses never have one
        raise _Bad(value)
    try:
        # Host bits are ignored (10.99.0.5/24 means 10.99.0.0/24), as in the config's CIDRs.
        return InNetwork(key, ipaddress.ip_network(value, strict=False), negated)
    except ValueError:
        raise _Bad(value) from None


_PORTS = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")


def _ports(key: str, _op: str, value: str, negated: bool) -> Term:
    m = _PORTS.fullmatch(value)
    if m is None:
        raise _Bad(value)
    lo = int(m[1])
    hi = int(m[2]) if m[2] is not None else lo
    if not lo <= hi <= 65535:
        raise _Bad(value)
    return PortIn(key, lo, hi, negated)


_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def parse_time(value: str) -> datetime:
    """An aware UTC datetime from RFC 3339 (offset required) or YYYY-MM-DD (UTC midnight).

    >>> parse_time("2026-11-23T11:40:00+01:00")
    datetime.datetime(2026, 11, 23, 10, 40, tzinfo=datetime.timezone.utc)
    """
    try:
        if _DATE.fullmatch(value):
            return datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC)
        if _RFC3339.fullmatch(value):
            return datetime.fromisoformat(value.upper().replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):
        pass  # well-formed but impossible: 2026-02-30, or 0001-01-01T00:00+01:00 (year 0 UTC)
    raise _Bad(value)


def _started(key: str, _op: str, value: str, negated: bool) -> Term:
    return StartedAt(key, parse_time(value), negated)


# Decimal (SI) multiples, as network and storage tools count bytes; binary ones spelled out.
BYTE_SUFFIXES: dict[str, int] = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
_BYTES = re.compile(r"([0-9]+(?:\.[0-9]+)?)(|k|M|G|T|Ki|Mi|Gi|Ti)")
_MAX_BYTES = 2**63 - 1  # BigInteger columns


def parse_bytes(value: str) -> int:
    """A byte count: 1500, 1.5k (1500), 10M (10**7), 2Gi (2 * 1024**3); must be a whole number."""
    m = _BYTES.fullmatch(value)
    if m is None:
        raise _Bad(value)
    amount = Decimal(m[1]) * BYTE_SUFFIXES[m[2]]
    if amount != amount.to_integral_value() or amount > _MAX_BYTES:
        raise _Bad(value)
    return int(amount)


_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")


def _compare(key: str, op: str, value: str, negated: bool) -> Term:
    if key == "bytes":
        return Compare(key, op, parse_bytes(value), negated)
    if _SECONDS.fullmatch(value) is None:
        raise _Bad(value)
    return Compare(key, op, float(value), negated)


@dataclass(frozen=True, slots=True)
class _Key:
    """One filter key: the operators it takes, its parser, its SQL, what a value looks like."""

    ops: str
    expected: str
    parse: Callable[[str, str, str, bool], Term]
    clause: Callable[[Any, Table], ColumnElement[bool]]


def _match_clause(term: Match, table: Table) -> ColumnElement[bool]:
    column = table.c[_MATCH_COLUMNS[term.key]]
    if term.key == "status":
        # A literal, not a bound parameter (the value is one of SessionStatus, checked by the
        # parser): a generic plan of PostgreSQL (asyncpg prepares every statement) uses the
        # partial index of an org's ongoing sessions only when the WHERE states its
        # `status = 'ongoing'` (tests/test_query.py, the live log's plan).
        return column == literal_column(f"'{SessionStatus(term.value).value}'")
    if column.nullable:
        # Two-valued even on NULL, so that `-client:x` keeps the sessions without a client.
        return and_(column.is_not(None), column == term.value)
    return column == term.value


def _network_clause(term: InNetwork, table: Table) -> ColumnElement[bool]:
    column = table.c[f"{term.key}_addr"]
    return network_clause(column, table.c.ip_version, term.network)


def _ports_clause(term: PortIn, table: Table) -> ColumnElement[bool]:
    column = table.c["src_port" if term.key == "sport" else "dst_port"]
    return column == term.lo if term.lo == term.hi else column.between(term.lo, term.hi)


def _started_clause(term: StartedAt, table: Table) -> ColumnElement[bool]:
    if term.key == "started_after":
        return table.c.started_at >= term.at
    return table.c.started_at < term.at


def _compare_clause(term: Compare, table: Table) -> ColumnElement[bool]:
    value: ColumnElement[Any] = (
        table.c.bytes_tx + table.c.bytes_rx if term.key == "bytes" else table.c.duration_s
    )
    return value > term.value if term.op == ">" else value < term.value


def _flag_clause(term: Flag, table: Table) -> ColumnElement[bool]:
    # The columns are NOT NULL (migration 0013), so a negated term is the other value.
    column = table.c[term.key]
    return column.is_(true()) if term.value else column.is_(false())


_MATCH_COLUMNS = {
    "protocol": "protocol",
    "client": "client_id",
    "user": "user_id",
    "resource": "resource_id",
    "gateway": "gateway",
    "status": "status",
    "close_reason": "close_reason",
}

_SEP = ", "
KEYS: dict[str, _Key] = {
    "protocol": _Key(
        ":",
        "tcp or udp",
        _choice(tuple(p.label for p in IpProto)),
        _match_clause,
    ),
    "client": _Key(":", "a client id", _text, _match_clause),
    "user": _Key(":", "a user id", _text, _match_clause),
    "resource": _Key(":", "a resource id", _text, _match_clause),
    "gateway": _Key(":", "a gateway name", _text, _match_clause),
    "src": _Key(":", "an IPv4/IPv6 address or CIDR", _network, _network_clause),
    "dst": _Key(":", "an IPv4/IPv6 address or CIDR", _network, _network_clause),
    "sport": _Key(":", "a port 0-65535 or a range a-b", _ports, _ports_clause),
    "dport": _Key(":", "a port 0-65535 or a range a-b", _ports, _ports_clause),
    "status": _Key(
        ":",
        " or ".join(s.value for s in SessionStatus),
        _choice(tuple(s.value for s in SessionStatus)),
        _match_clause,
    ),
    "close_reason": _Key(
        ":",
        "one of " + _SEP.join(r.value for r in CloseReason),
        _choice(tuple(r.value for r in CloseReason)),
        _match_clause,
    ),
    "started_after": _Key(
        ":", "an RFC 3339 time with offset or a date YYYY-MM-DD", _started, _started_clause
    ),
    "started_before": _Key(
        ":", "an RFC 3339 time with offset or a date YYYY-MM-DD", _started, _started_clause
    ),
    "bytes": _Key(
        "<>",
        "a byte count such as 1500, 10k, 2.5M, 1G or 4Mi",
        _compare,
        _compare_clause,
    ),
    "duration": _Key("<>", "a number of seconds such as 30 or 0.5", _compare, _compare_clause),
    # sessions from flow records (issue 20): counters scaled by sampling, records lost
    "estimated": _Key(":", "true or false", _flag, _flag_clause),
    "incomplete": _Key(":", "true or false", _flag, _flag_clause),
}

_KNOWN = _SEP.join(f"{k}{s.ops[0]}" if s.ops == ":" else f"{k}>, {k}<" for k, s in KEYS.items())
_TERM = re.compile(r"(-?)([a-z_]+)([:<>])(.*)", re.DOTALL)


def _tokens(text: str) -> list[tuple[str, str]]:
    """Split on whitespace outside double quotes: [(as written, value without the quotes)]."""
    tokens: list[tuple[str, str]] = []
    i = 0
    n = len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start, chars, quoted = i, [], False
        while i < n and (quoted or not text[i].isspace()):
            if text[i] == '"':
                quoted = not quoted
            else:
                chars.append(text[i])
            i += 1
        if quoted:
            raise FilterError(token=text[start:i], expected="a closing double quote")
        tokens.append((text[start:i], "".join(chars)))
    return tokens


# Bounds on the SQL one request can make the database build and plan: SQLite refuses
# expression trees deeper than 1000, and each address term expands to many LIKE tests
# (32 IPv6 CIDR terms took 2.8 s to plan and run on 21 rows; 8 take 0.2 s).
MAX_TERMS = 32
MAX_ADDRESS_TERMS = 8


def parse_filter(text: str, *, keys: Collection[str] | None = None, reader: str = "") -> Filter:
    """Parse filter text into a Filter; raise FilterError naming the first bad term.

    `keys` (with `reader`, who reads) limits the keys to those a reader can answer: the usage
    rollup has no ports or addresses, so `dport:22` is an error there, not an empty answer.

    >>> parse_filter('dport:443 -client:"bob laptop"').terms
    (PortIn(key='dport', lo=443, hi=443, negated=False),
     Match(key='client', value='bob laptop', negated=True))
    """
    terms: list[Term] = []
    addresses = 0
    for n, (written, token) in enumerate(_tokens(text)):
        if n == MAX_TERMS:
            raise FilterError(token=written, expected=f"at most {MAX_TERMS} terms")
        if "\x00" in written:  # nothing stored holds one, and PostgreSQL text cannot (issue 16)
            raise FilterError(token=written, expected="no NUL character (U+0000)")
        m = _TERM.fullmatch(token)
        spec = KEYS.get(m[2]) if m else None
        if m is None or spec is None:
            raise FilterError(token=written, expected=f"one of the keys {_KNOWN}")
        negated, key, op, value = m[1] == "-", m[2], m[3], m[4]
        if keys is not None and key not in keys:
            answered = _SEP.join(f"{k}:" for k in KEYS if k in keys)
            raise FilterError(
                token=written, expected=f"one of the keys {reader} can answer: {answered}"
            )
        if op not in spec.ops:
            form = f"{key}:VALUE" if spec.ops == ":" else f"{key}>VALUE or {key}<VALUE"
            raise FilterError(token=written, expected=f"{form} with {spec.expected}")
        if spec.clause is _network_clause:
            addresses += 1
            if addresses > MAX_ADDRESS_TERMS:
                why = f"at most {MAX_ADDRESS_TERMS} src:/dst: terms"
                raise FilterError(token=written, expected=why)
        try:
            terms.append(spec.parse(key, op, value, negated))
        except _Bad:
            raise FilterError(token=written, expected=spec.expected) from None
    return Filter(tuple(terms))


def filter_clause(flt: Filter, table: Table) -> ColumnElement[bool]:
    """The WHERE expression of `flt` on the sessions `table` (bound parameters only).

    >>> select(table.c.id).where(table.c.org_id == org, filter_clause(parse_filter(text), table))
    """
    clauses: list[ColumnElement[bool]] = []
    for term in flt.terms:
        clause = KEYS[term.key].clause(term, table)
        clauses.append(not_(clause) if term.negated else clause)
    return and_(*clauses) if clauses else true()
