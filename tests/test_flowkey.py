"""Session ids (flowkey.SessionIds): unique whatever the packets, time-ordered, tagged; flow
keys as they read back; and the IPv4 address texts and UUIDs the flow table makes without the
standard library's checks."""

from __future__ import annotations

import copy
import ipaddress
import pickle
import sys
import uuid
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from tunnelacct.sessions.flowkey import (
    KEY_BYTES,
    SessionIds,
    addr_text,
    id_range,
    id_tag,
    key_proto,
    key_words,
    pack_key,
    start_ms,
    unpack_key,
    uuid_of_int,
)

TS = 1_764_000_000.123456


def new_id(ids: SessionIds, started_ts: float) -> uuid.UUID:
    """A new id of `ids`, as the standard library reads its 128 bits."""
    return uuid.UUID(int=ids.new(started_ts))


def _entropy(values: list[bytes]) -> Iterator[bytes]:
    yield from values


def test_ids_of_one_start_differ_and_read_back_as_version_7_with_the_start() -> None:
    ids = SessionIds()
    made = [new_id(ids, TS) for _ in range(1000)]
    assert len(set(made)) == len(made)
    for ident in made:
        assert ident.version == 7 and ident.variant == uuid.RFC_4122
        assert start_ms(ident) == round(TS * 1_000_000) // 1000
        assert ids.issued(ident)


def test_a_wrapped_counter_draws_a_tag_not_used_before() -> None:
    first, same, other = b"\x01" * 6, b"\x01" * 6, b"\x02" * 6
    source = _entropy([first, same, other])
    ids = SessionIds(entropy=lambda n: next(source))
    ids._counter = (1 << 32) - 1  # the last id of the first tag
    last_of_first = new_id(ids, TS)
    first_of_next = new_id(ids, TS)  # the entropy repeats the tag once: it is drawn again
    assert last_of_first != first_of_next
    assert id_tag(last_of_first) != id_tag(first_of_next)
    assert ids.tags == {id_tag(last_of_first), id_tag(first_of_next)}
    assert ids.issued(last_of_first) and ids.issued(first_of_next)


def test_another_issuer_s_ids_are_not_issued_here() -> None:
    mine, theirs = SessionIds(), SessionIds()
    assert not mine.issued(new_id(theirs, TS))
    assert not mine.issued(uuid.uuid4())


def test_an_id_range_holds_exactly_the_ids_of_its_milliseconds() -> None:
    ids = SessionIds()
    low, high = id_range(start_ms(new_id(ids, TS)), start_ms(new_id(ids, TS + 0.002)))
    assert low <= new_id(ids, TS) <= high
    assert low <= new_id(ids, TS + 0.002) <= high
    assert not low <= new_id(ids, TS - 0.001) <= high
    assert not low <= new_id(ids, TS + 0.003) <= high


@given(st.integers(0, 2**128 - 1))
def test_a_uuid_made_from_an_int_is_the_standard_library_s(value: int) -> None:
    made = uuid_of_int(value)
    standard = uuid.UUID(int=value)
    assert type(made) is uuid.UUID
    assert made == standard and hash(made) == hash(standard)
    assert (made.int, made.hex, str(made), made.bytes) == (
        standard.int,
        standard.hex,
        str(standard),
        standard.bytes,
    )
    assert (made.version, made.variant, made.is_safe) == (
        standard.version,
        standard.variant,
        standard.is_safe,
    )
    assert pickle.loads(pickle.dumps(made)) == standard
    assert copy.copy(made) == standard


@given(st.integers(0, 2**32 - 1))
def test_an_ipv4_address_text_is_ipaddress_s(value: int) -> None:
    assert addr_text(4, value) == str(ipaddress.IPv4Address(value))


@given(
    st.sampled_from([4, 6]),
    st.integers(0, 255),
    st.integers(0, 2**128 - 1),
    st.integers(0, 65535),
    st.integers(0, 2**128 - 1),
    st.integers(0, 65535),
)
def test_a_flow_key_reads_back_the_conversation_it_was_packed_from(
    family: int, proto: int, a_addr: int, a_port: int, b_addr: int, b_port: int
) -> None:
    if family == 4:
        a_addr >>= 96
        b_addr >>= 96
    meta = (family << 40) | (proto << 32) | (a_port << 16) | b_port
    key = pack_key(meta, a_addr >> 64, a_addr & (2**64 - 1), b_addr >> 64, b_addr & (2**64 - 1))
    assert isinstance(key, bytes)
    assert len(key) == KEY_BYTES == 40
    assert unpack_key(key) == (family, proto, a_addr, a_port, b_addr, b_port)
    assert key_proto(key) == proto
    assert key_words(key)[0] == meta
    # the bytes are the five words as numpy holds them in a row of a key matrix
    words = [meta, a_addr >> 64, a_addr & (2**64 - 1), b_addr >> 64, b_addr & (2**64 - 1)]
    assert key == b"".join(word.to_bytes(8, sys.byteorder) for word in words)
