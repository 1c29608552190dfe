"""ReplaySource on capture files the tests write: fast, looped, and paced by an injected clock.

Every expectation comes from what the test wrote (the packets' bytes and recorded times), never
from an earlier run of the code. The files use pcapng with 2^-20 s timestamps, and the times
are binary fractions, so every time here is exact in the file and in a float.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from tests.helpers.pcapwrite import LINKTYPE_RAW, write_pcap, write_pcapng
from tests.helpers.waiting import WAIT_S
from tunnelacct.capture.batch import RawBatch
from tunnelacct.capture.replay import ReplaySource
from tunnelacct.errors import CaptureError

T0 = 1_700_000_000.0  # recorded time of the first packet
OFFSETS = (0.0, 0.5, 0.5, 1.25, 4.0, 10.0)  # recorded times after T0; the span is 10 s
START = 5000.0  # the fake wall clock when the first pass starts
BINARY_TS = 0x80 | 20  # pcapng if_tsresol: 2^-20 s
HANG_S = WAIT_S  # a read that has not returned by then is stuck

Record = tuple[float, bytes]  # (ts, packet bytes from the IP header)


def packet(i: int) -> bytes:
    """A raw IPv4 UDP packet that differs from every other one (source port and length)."""
    udp = UDP(sport=40000 + i, dport=53) / Raw(b"q" * (i + 1))
    return bytes(IP(src="100.64.0.2", dst="10.99.0.5") / udp)


def recorded(offsets: tuple[float, ...] = OFFSETS) -> list[Record]:
    """The packets a test writes: packet i recorded at T0 + offsets[i]."""
    return [(T0 + off, packet(i)) for i, off in enumerate(offsets)]


def write_capture(path: Path, records: list[Record]) -> Path:
    """A pcapng file of raw-IP packets on one interface with 2^-20 s timestamps."""
    return write_pcapng(
        path, [(LINKTYPE_RAW, BINARY_TS, "wg0")], [(0, ts, data) for ts, data in records]
    )


def unpack(batch: RawBatch) -> list[Record]:
    """(ts, bytes) of each packet of a batch, in order."""
    offsets, caplens = batch.offsets.tolist(), batch.caplens.tolist()
    return [
        (float(ts), bytes(batch.buf[off : off + n]))
        for ts, off, n in zip(batch.ts.tolist(), offsets, caplens, strict=True)
    ]


def read_all(source: ReplaySource, timeout_s: float = 0.0, limit: int = 1000) -> list[Record]:
    """Every packet handed out until read_batch returns None."""
    out: list[Record] = []
    for _ in range(limit):
        batch = source.read_batch(timeout_s)
        if batch is None:
            return out
        out += unpack(batch)
    raise AssertionError(f"read_batch still returned packets after {limit} calls")


class FakeTime:
    """An injected clock and sleep: time moves only when the source sleeps or the test sets it."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        # A source sleeps only until the next packet is due or its timeout: always some time.
        # Failing here, inside read_batch, turns a regression into a failure, not a spin.
        assert seconds > 0, f"asked to sleep {seconds} s"
        assert len(self.slept) < 1000, "read_batch keeps sleeping without releasing packets"
        self.slept.append(seconds)
        self.now += seconds


def paced(path: Path, speed: float, *, loop: bool = False) -> tuple[ReplaySource, FakeTime]:
    """A paced source on a fake clock that reads START."""
    fake = FakeTime(START)
    return ReplaySource(path, speed=speed, loop=loop, clock=fake.clock, sleep=fake.sleep), fake


def returns_in_time(source: ReplaySource, call: Callable[[], object]) -> list[object]:
    """[call()] when it returns within HANG_S; otherwise stop() the source and fail."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(HANG_S)
    if thread.is_alive():
        source.stop()  # ends the stuck read so the thread does not spin on
        thread.join(HANG_S)
        pytest.fail(f"read_batch did not return within {HANG_S} s")
    return result


# -- speed 0: as fast as possible, recorded times ---------------------------------------------


@pytest.mark.parametrize("fmt", ["pcapng", "pcap"])
def test_fast_replay_yields_every_packet_once_with_its_recorded_time(
    tmp_path: Path, fmt: str
) -> None:
    records = recorded()
    if fmt == "pcapng":
        path, tolerance_s = write_capture(tmp_path / "c.pcapng", records), 0.0
    else:  # classic pcap holds microseconds: a float near T0 keeps them to within 1 us
        path, tolerance_s = write_pcap(tmp_path / "c.pcap", records, LINKTYPE_RAW), 1e-6
    source = ReplaySource(path)
    batches = []
    while (batch := source.read_batch(0.0)) is not None:
        batches.append(batch)
        assert len(batches) < 100, "the file never ended"
    out = [record for batch in batches for record in unpack(batch)]
    assert [data for _, data in out] == [data for _, data in records]
    assert [ts for ts, _ in out] == pytest.approx([ts for ts, _ in records], abs=tolerance_s, rel=0)
    for batch in batches:
        assert batch.linktypes.tolist() == [LINKTYPE_RAW] * len(batch)
        assert batch.wirelens.tolist() == batch.caplens.tolist()  # written uncut
    assert source.finished
    assert (source.passes, source.stats()) == (1, (len(records), 0))
    assert source.read_batch(0.0) is None  # and stays ended


def test_loop_at_speed_zero_shifts_pass_n_by_n_times_span_plus_gap(tmp_path: Path) -> None:
    records = recorded()
    span_s, gap_s = OFFSETS[-1] - OFFSETS[0], 100.0
    source = ReplaySource(
        write_capture(tmp_path / "c.pcapng", records), loop=True, loop_gap_s=gap_s
    )
    out: list[Record] = []
    while len(out) < 4 * len(records):
        batch = source.read_batch(0.0)
        assert batch is not None, "a looping replay never ends"
        out += unpack(batch)
    expected = [(ts + n * (span_s + gap_s), data) for n in range(4) for ts, data in records]
    assert out == expected
    # so the next pass begins `gap_s` after the last packet of the one before
    for n in range(1, 4):
        assert out[n * len(records)][0] - out[n * len(records) - 1][0] == gap_s
    assert not source.finished
    assert source.passes == 4


# -- speed > 0: paced by the injected clock ---------------------------------------------------


@pytest.mark.parametrize("speed", [1.0, 2.0, 0.5])
def test_paced_packets_are_released_when_the_clock_reaches_their_time(
    tmp_path: Path, speed: float
) -> None:
    records = recorded()
    source, fake = paced(write_capture(tmp_path / "c.pcapng", records), speed)
    due = [START + off / speed for off in OFFSETS]  # first-pass start + (ts - first ts) / speed
    released = read_all(source)  # this first read starts the pass at START
    assert released == [(START, records[0][1])]
    for moment in sorted(set(due[1:])):
        for now in (moment - 2**-10, moment):
            fake.now = now
            released += read_all(source)
            # exactly the packets due by now, each stamped with the time it became due
            assert released == [
                (d, data) for d, (_, data) in zip(due, records, strict=True) if d <= now
            ]
    assert fake.slept == []  # read_batch(0) never waits
    assert source.finished
    assert source.stats() == (len(records), 0)


def test_speed_two_halves_the_recorded_gaps(tmp_path: Path) -> None:
    source, fake = paced(write_capture(tmp_path / "c.pcapng", recorded()), 2.0)
    times: list[float] = []
    while (batch := source.read_batch(60.0)) is not None:
        for ts, _ in unpack(batch):
            assert ts == fake.now  # released the moment it is due, stamped with that moment
            times.append(ts)
    assert times[0] == START
    gaps = [b - a for a, b in pairwise(times)]
    assert gaps == [(b - a) / 2 for a, b in pairwise(OFFSETS)]
    assert fake.now == START + OFFSETS[-1] / 2  # never slept past the last packet
    assert sum(fake.slept) == OFFSETS[-1] / 2
    assert source.finished


def test_paced_read_waits_at_most_its_timeout(tmp_path: Path) -> None:
    records = recorded()
    source, fake = paced(write_capture(tmp_path / "c.pcapng", records), 1.0)
    assert read_all(source) == [(START, records[0][1])]
    assert source.read_batch(0.25) is None  # the next packets are due at START + 0.5
    assert fake.now == START + 0.25
    batch = source.read_batch(1.0)
    assert batch is not None
    assert unpack(batch) == [(START + 0.5, records[1][1]), (START + 0.5, records[2][1])]
    assert fake.now == START + 0.5


def test_paced_loop_starts_each_pass_when_the_previous_one_ends(tmp_path: Path) -> None:
    records = recorded()
    source, fake = paced(write_capture(tmp_path / "c.pcapng", records), 2.0, loop=True)
    out: list[Record] = []
    while len(out) < 3 * len(records):
        batch = source.read_batch(60.0)
        assert batch is not None, "a looping replay never ends"
        out += unpack(batch)
    pass_s = (OFFSETS[-1] - OFFSETS[0]) / 2
    expected = [
        (START + n * pass_s + off / 2, data)
        for n in range(3)
        for off, (_, data) in zip(OFFSETS, records, strict=True)
    ]
    assert out == expected
    assert not source.finished


# -- stop, close, empty and broken files ------------------------------------------------------


def test_stop_makes_read_batch_return_none(tmp_path: Path) -> None:
    path = write_capture(tmp_path / "c.pcapng", recorded())
    endless = ReplaySource(path, loop=True)
    first = endless.read_batch(0.0)
    assert first is not None
    endless.stop()
    assert endless.read_batch(0.0) is None
    assert endless.read_batch(1.0) is None
    assert endless.stats() == (len(first), 0)  # what was handed out stays counted
    assert not endless.finished  # stopped, not ended

    source, fake = paced(path, 1.0)
    assert len(read_all(source)) == 1
    source.stop()
    fake.now = START + 3600  # every held packet is long due
    assert source.read_batch(0.0) is None
    assert source.read_batch(10.0) is None
    assert fake.slept == []

    unread = ReplaySource(path)
    unread.stop()
    assert unread.read_batch(0.0) is None
    assert unread.stats() == (0, 0)


def test_read_after_close_raises_capture_error(tmp_path: Path) -> None:
    path = write_capture(tmp_path / "c.pcapng", recorded())
    fresh, mid_pass = ReplaySource(path), ReplaySource(path, loop=True)
    assert mid_pass.read_batch(0.0) is not None
    for source in (fresh, mid_pass):
        source.close()
        source.close()  # idempotent
        with pytest.raises(CaptureError, match="closed") as info:
            source.read_batch(0.0)
        assert info.value.interface == str(path)


@pytest.mark.parametrize("loop", [False, True], ids=["once", "loop"])
@pytest.mark.parametrize("speed", [0.0, 1.0], ids=["fast", "paced"])
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_empty_capture_finishes_at_once(tmp_path: Path, fmt: str, speed: float, loop: bool) -> None:
    if fmt == "pcap":
        path = write_pcap(tmp_path / "empty.pcap", [], LINKTYPE_RAW)  # file header only
    else:
        path = write_capture(tmp_path / "empty.pcapng", [])  # section and interface only
    fake = FakeTime(START)
    source = ReplaySource(path, speed=speed, loop=loop, clock=fake.clock, sleep=fake.sleep)
    assert returns_in_time(source, lambda: source.read_batch(1.0)) == [None]
    assert source.finished
    assert (source.passes, source.stats()) == (1, (0, 0))
    assert fake.slept == []


def pcap_with_absurd_record(path: Path) -> Path:
    """One good packet, then a record header claiming 2 GiB: corrupt from there on."""
    write_pcap(path, [(T0, packet(0))], LINKTYPE_RAW)
    with path.open("ab") as f:
        f.write(struct.pack("<IIII", int(T0) + 1, 0, 0x7FFF_FFFF, 0x7FFF_FFFF) + b"\0" * 64)
    return path


def pcapng_with_bad_block(path: Path) -> Path:
    """A valid section with one packet, then a block whose length is not a multiple of 4."""
    write_capture(path, [(T0, packet(0))])
    with path.open("ab") as f:
        f.write(struct.pack("<II", 6, 13) + b"\0" * 20)
    return path


CORRUPT: dict[str, tuple[Callable[[Path], Path], str]] = {
    "not-a-capture": (
        lambda p: (p.write_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), p)[1],
        "not a pcap or pcapng file",
    ),
    "zero-bytes": (lambda p: (p.write_bytes(b""), p)[1], "magic empty"),
    "truncated-header": (
        lambda p: (p.write_bytes(write_pcap(p, [], LINKTYPE_RAW).read_bytes()[:10]), p)[1],
        "header is truncated",
    ),
    "absurd-record": (pcap_with_absurd_record, "corrupt"),
    "bad-pcapng-block": (pcapng_with_bad_block, "invalid length 13"),
    "missing": (lambda p: p, "No such file"),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_capture_raises_capture_error_naming_the_file(tmp_path: Path, case: str) -> None:
    make, why = CORRUPT[case]
    path = make(tmp_path / f"{case}.cap")
    with pytest.raises(CaptureError) as info:
        read_all(ReplaySource(path, loop=True))  # never a silent, partial replay
    assert info.value.interface == str(path)
    assert str(info.value).startswith(f"capture on {path}: ")
    assert why in info.value.why


@pytest.mark.parametrize("case", ["absurd-record", "bad-pcapng-block"])
def test_replay_hands_out_the_packets_before_mid_file_damage(tmp_path: Path, case: str) -> None:
    # Issue 16: the reader raised before handing out the good records of its read chunk.
    make, _why = CORRUPT[case]
    source = ReplaySource(make(tmp_path / f"{case}.cap"))
    got = []
    with pytest.raises(CaptureError):
        for _ in range(100):
            batch = source.read_batch(0.0)
            assert batch is not None, "the damage must end the replay with an error"
            got += unpack(batch)
    assert [ts for ts, _data in got] == [float(T0)]


def test_file_broken_between_passes_raises_capture_error_naming_it(tmp_path: Path) -> None:
    path = write_capture(tmp_path / "c.pcapng", recorded())
    source = ReplaySource(path, loop=True)
    assert source.read_batch(0.0) is not None  # the whole first pass
    replacement = tmp_path / "new.pcapng"
    replacement.write_bytes(b"no longer a capture")
    os.replace(replacement, path)
    with pytest.raises(CaptureError) as info:
        read_all(source)
    assert info.value.interface == str(path)
    assert "not a pcap or pcapng file" in info.value.why


def test_negative_speed_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="speed -1"):
        ReplaySource(write_capture(tmp_path / "c.pcapng", recorded()), speed=-1.0)


def test_a_truncated_last_record_is_logged_and_the_packets_before_it_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = recorded()
    path = write_capture(tmp_path / "cut.pcapng", records)
    path.write_bytes(path.read_bytes()[:-10])  # tcpdump killed while writing the last block
    with caplog.at_level("WARNING", logger="tunnelacct.capture.replay"):
        got = read_all(ReplaySource(path))
    assert got == records[:-1]
    assert [r.getMessage().startswith(f"{path}: ") for r in caplog.records] == [True]
