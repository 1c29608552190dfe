"""Addresses in networks on SQLite: LIKE patterns on the address text (store/addresses.py).

The address columns hold the text the writer wrote (`flowkey.addr_text`, inet_ntop).
"""

from __future__ import annotations

import ipaddress

from sqlalchemy import ColumnElement, and_, case, func, or_, true

from tunnelacct.sessions.flowkey import addr_text

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def text_network_clause(
    column: ColumnElement[str], ip_version: ColumnElement[int], network: IpNetwork
) -> ColumnElement[bool]:
    """Whether the address text in `column` lies in `network`, in portable SQL (a text
    column: SQLite's, not PostgreSQL's inet).

    Matching stays in the database and uses only LIKE, REPLACE, LENGTH and CASE, so it needs
    no registered SQLite function:

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
