"""The session filter language: `parse_filter(text) -> Filter`, `filter_clause(flt, table)`.

A filter is space-separated terms, all ANDed; a value holding spaces is double-quoted::

    protocol:tcp client:"bob laptop" dst:10.99.0.0/24 dport:8000-8100 -status:ongoing bytes>10M

`parse_filter` is pure (no SQL) and raises `FilterError(token, expected)` for the first bad
term. `filter_clause` turns a `Filter` into one parameterised SQLAlchemy expression on the
sessions table, so the database does all the filtering and the (org_id, started_at, id),
(org_id, client_id, started_at) and (org_id, resource_id, started_at) indexes apply to the
`started_*`, `client:` and `resource:` terms of an org-scoped query.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, case, func, not_, or_, true

from tunnelacct.enums import CloseReason, IpProto, SessionStatus
from tunnelacct.errors import FilterError
from tunnelacct.flowkey import addr_text

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


Term = Match | InNetwork | PortIn | StartedAt | Compare


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


_MATCH_COLUMNS = {
    "protocol": "protocol",
    "client": "client_id",
    "user": "user_id",
    "resource": "resource_id",
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
}

_KNOWN = _SEP.join(f"{k}{s.ops[0]}" if s.ops == ":" else f"{k}>, {k}<" for k, s in KEYS.items())
_TERM = re.compile(r"(-?)([a-z_]+)([:<>])(.*)", re.DOTALL)


def _tokens(text: str) -> list[tuple[str, str]]:
    """Split on whitespace outside double quotes: [(as written, value without the quotes)]."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(text)
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


def parse_filter(text: str) -> Filter:
    """Parse filter text into a Filter; raise FilterError naming the first bad term.

    >>> parse_filter('dport:443 -client:"bob laptop"').terms
    (PortIn(key='dport', lo=443, hi=443, negated=False),
     Match(key='client', value='bob laptop', negated=True))
    """
    terms: list[Term] = []
    addresses = 0
    for n, (written, token) in enumerate(_tokens(text)):
        if n == MAX_TERMS:
            raise FilterError(token=written, expected=f"at most {MAX_TERMS} terms")
        m = _TERM.fullmatch(token)
        spec = KEYS.get(m[2]) if m else None
        if m is None or spec is None:
            raise FilterError(token=written, expected=f"one of the keys {_KNOWN}")
        negated, key, op, value = m[1] == "-", m[2], m[3], m[4]
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


# --- addresses in networks, on text columns ---------------------------------------------------


def network_clause(
    column: ColumnElement[str], ip_version: ColumnElement[int], network: IpNetwork
) -> ColumnElement[bool]:
    """Whether the address text in `column` lies in `network`, in portable SQL.

    Addresses are stored as text written by `flowkey.addr_text` (inet_ntop: dotted quads;
    RFC 5952 IPv6 with `::ffff:a.b.c.d` and `::a.b.c.d` for IPv4-embedded addresses), and
    there is no numeric address column to compare a range on (no model change in issue 4).
    Matching stays in the database and uses only LIKE, REPLACE, LENGTH and CASE, which SQLite
    and PostgreSQL share, so it needs no registered SQLite function and no `inet` cast:

    - a /32 or /128 is one equality with the text the writer would have written;
    - an IPv4 network is split at the next octet boundary into at most 128 blocks, each a
      prefix pattern (`10.99.%`) or, for the last octet, one address;
    - an IPv6 network is split at the next nibble boundary into at most 8 blocks. The stored
      text is expanded in SQL to all eight groups (`::` replaced by as many `0:` groups as are
      missing, counted from the colons), then each block is a pattern on the fixed leading
      groups plus a length test of the next group's text (leading zeros are not written, so a
      group's nibble prefix fixes its length). Dotted forms are matched as IPv4 after their
      `::ffff:` or `::` head.

    Families never mix (ip_version is compared first): 10.0.0.0/8 does not match
    ::ffff:10.0.0.1, as in Python's `ipaddress`. A prefix term cannot use an index; callers
    scope by org and time, whose index does the narrowing.
    """
    if network.prefixlen == network.max_prefixlen:
        return column == addr_text(network.version, int(network.network_address))
    if isinstance(network, ipaddress.IPv4Network):
        return and_(ip_version == 4, _dotted_clause(column, "", network))
    plain = and_(column.not_like("%.%"), _v6_plain_clause(column, network))
    dotted = _v6_dotted_clause(column, network)
    if dotted is None:
        return and_(ip_version == 6, plain)
    return and_(ip_version == 6, or_(plain, and_(column.like("%.%"), dotted)))


def _dotted_clause(
    column: ColumnElement[str], head: str, network: ipaddress.IPv4Network
) -> ColumnElement[bool]:
    """`column` (known to be `head` + a dotted quad) is in `network`."""
    if network.prefixlen == 0:
        return true()
    block = -(-network.prefixlen // 8) * 8
    if block == 32:
        return column.in_([head + str(a) for a in network])
    patterns: list[ColumnElement[bool]] = []
    for sub in network.subnets(new_prefix=block):
        octets = str(sub.network_address).split(".")[: block // 8]
        patterns.append(column.like(head + ".".join(octets) + ".%"))
    return or_(*patterns)


# IPv4-embedded IPv6 texts inet_ntop writes: the /96 they cover, and how to recognise them.
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPAT = ipaddress.IPv6Network("::/96")


def _v6_dotted_clause(
    column: ColumnElement[str], network: ipaddress.IPv6Network
) -> ColumnElement[bool] | None:
    """`column` (IPv6 text with a dotted tail) is in `network`; None: no dotted text can be."""
    forms = (
        ("::ffff:", _MAPPED, column.like("::ffff:%")),
        ("::", _COMPAT, and_(column.like("::%"), column.not_like("::ffff:%"))),
    )
    clauses: list[ColumnElement[bool]] = []
    for head, embedding, shape in forms:
        if embedding.subnet_of(network):
            clauses.append(shape)
        elif network.subnet_of(embedding):
            inner = ipaddress.IPv4Network(
                (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
            )
            clauses.append(and_(shape, _dotted_clause(column, head, inner)))
    return or_(*clauses) if clauses else None


def _expanded(column: ColumnElement[str]) -> ColumnElement[str]:
    """All eight groups of an RFC 5952 text, each followed by ':' (fd00::1 -> fd00:0:...:1:).

    `::` stands for 8 - (groups written) zero groups, and the groups written follow from the
    colon count c: c in the middle (a::b), c - 1 at an end (::b, a::), none for `::` itself.
    """
    colons = func.length(column) - func.length(func.replace(column, ":", ""))
    zeros = ":0:0:0:0:0:0:0:0:"  # sliced to ':' + '0:' * n, or from 2 to '0:' * n

    def run(start: int, length: ColumnElement[int]) -> ColumnElement[str]:
        return func.substr(zeros, start, length)

    return case(
        (column == "::", "0:" * 8),
        (column.like("::%"), func.replace(column + ":", "::", run(2, 18 - 2 * colons))),
        (column.like("%::"), func.replace(column, "::", run(1, 19 - 2 * colons))),
        else_=func.replace(column + ":", "::", run(1, 17 - 2 * colons)),
    )


def _group_length_is(text: ColumnElement[str], prefix: str, length: int) -> ColumnElement[bool]:
    """The text after `prefix` runs `length` characters to the next ':' (LIKE's '_' matches
    ':' too, hence the NOT LIKEs)."""
    return and_(
        text.like(prefix + "_" * length + ":%"),
        *(text.not_like(prefix + "_" * i + ":%") for i in range(length)),
    )


def _v6_plain_clause(
    column: ColumnElement[str], network: ipaddress.IPv6Network
) -> ColumnElement[bool]:
    """`column` (IPv6 text without a dotted tail) is in `network`."""
    text = _expanded(column)
    block = -(-network.prefixlen // 4) * 4
    clauses: list[ColumnElement[bool]] = []
    for sub in network.subnets(new_prefix=block):
        groups = sub.network_address.exploded.split(":")
        full, nibbles = divmod(block, 16)
        head = "".join(f"{int(g, 16):x}:" for g in groups[:full])
        if nibbles == 0:
            clauses.append(text.like(head + "%"))
            continue
        nibbles //= 4
        written = groups[full][:nibbles].lstrip("0")
        free = 4 - nibbles
        if written:
            # A nonzero nibble prefix is written out, followed by every remaining nibble.
            clauses.append(_group_length_is(text, head + written, free))
        else:
            # A zero nibble prefix is dropped with the leading zeros: the group is short.
            clauses.append(or_(*(_group_length_is(text, head, n) for n in range(1, free + 1))))
    return or_(*clauses)
