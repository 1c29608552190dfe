"""Session ids (flowkey.SessionIds): unique whatever the packets, time-ordered, tagged."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from tunnelacct.sessions.flowkey import SessionIds, id_range, id_tag, start_ms

TS = 1_764_000_000.123456


def _entropy(values: list[bytes]) -> Iterator[bytes]:
    yield from values


def test_ids_of_one_start_differ_and_read_back_as_version_7_with_the_start() -> None:
    ids = SessionIds()
    made = [ids.new(TS) for _ in range(1000)]
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
    last_of_first = ids.new(TS)
    first_of_next = ids.new(TS)  # the entropy repeats the tag once: it is drawn again
    assert last_of_first != first_of_next
    assert id_tag(last_of_first) != id_tag(first_of_next)
    assert ids.tags == {id_tag(last_of_first), id_tag(first_of_next)}
    assert ids.issued(last_of_first) and ids.issued(first_of_next)


def test_another_issuer_s_ids_are_not_issued_here() -> None:
    mine, theirs = SessionIds(), SessionIds()
    assert not mine.issued(theirs.new(TS))
    assert not mine.issued(uuid.uuid4())


def test_an_id_range_holds_exactly_the_ids_of_its_milliseconds() -> None:
    ids = SessionIds()
    low, high = id_range(start_ms(ids.new(TS)), start_ms(ids.new(TS + 0.002)))
    assert low <= ids.new(TS) <= high
    assert low <= ids.new(TS + 0.002) <= high
    assert not low <= ids.new(TS - 0.001) <= high
    assert not low <= ids.new(TS + 0.003) <= high
