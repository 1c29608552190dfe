"""Capture files (pcap and pcapng) read in large chunks and yielded as RawBatch objects.

The record walk is the only per-packet Python loop here; every field is then gathered with
vectorised numpy reads at the collected offsets.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BufferedReader
from pathlib import Path

import numpy as np

from tunnelacct.capture.batch import BUF_PAD, RawBatch
from tunnelacct.errors import CaptureFormatError

log = logging.getLogger(__name__)

# The bytes of one read, so the records of one batch: about 19,000 headers-only packets. Each
# batch becomes Python lists and tuples while the flow table keys it, and the pymalloc arenas
# they take stay with the process: a session-heavy import peaked at 327-334 MiB with 4 MiB
# reads and at 283-286 MiB with 1 MiB ones, for about 2% more of the flow table's
# instructions (docs/performance-sessions.md, "Smaller reads").
CHUNK_BYTES = 1 << 20
MAX_RECORD_BYTES = 1 << 18  # larger records mean a corrupt file, not a packet

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
BLOCK_IDB, BLOCK_EPB, BLOCK_SPB, BLOCK_OPB = 1, 6, 3, 2


@dataclass(slots=True)
class FileStats:
    """What reading one file found besides packets."""

    packets: int = 0
    bytes_read: int = 0
    truncated_tail: bool = False  # the file ended inside a record (e.g. tcpdump was killed)
    tail: str | None = None  # then: what was left over, as also said in `warnings`
    warnings: list[str] = field(default_factory=list)


def _fill(f: BufferedReader, rest: bytes) -> tuple[bytearray, int] | None:
    """`rest` plus up to CHUNK_BYTES more of `f` in a fresh buffer that ends with BUF_PAD zero
    bytes; returns (buffer, valid length), or None at the end of the file."""
    buf = bytearray(len(rest) + CHUNK_BYTES + BUF_PAD)
    buf[: len(rest)] = rest
    got = f.readinto(memoryview(buf)[len(rest) : len(rest) + CHUNK_BYTES])
    if not got:
        return None
    return buf, len(rest) + got


def open_capture(path: str | os.PathLike[str]) -> CaptureReader:
    """Open a pcap or pcapng file by its magic number; raises CaptureFormatError otherwise."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CaptureFormatError(str(p), e.strerror or str(e)) from e
    if head in PCAP_MAGICS:
        return PcapReader(p)
    if len(head) == 4 and struct.unpack("<I", head)[0] == PCAPNG_SHB:
        return PcapngReader(p)
    raise CaptureFormatError(str(p), f"not a pcap or pcapng file (magic {head.hex() or 'empty'})")


class CaptureReader:
    """Base of the file readers: iterate batches(), then read stats."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stats = FileStats()
        self.size_bytes = path.stat().st_size

    def batches(self) -> Iterator[RawBatch]:
        """Yield the file's packets in batches of whole records, in file order."""
        raise NotImplementedError

    def _chunks(self, skip: int) -> Iterator[tuple[bytes, int]]:
        """Yield (buffer, start) pairs; the caller returns how much of each it consumed."""
        raise NotImplementedError


class PcapReader(CaptureReader):
    """Classic libpcap files, both byte orders, micro- and nanosecond timestamps."""

    def batches(self) -> Iterator[RawBatch]:
        with self.path.open("rb") as f:
            header = f.read(24)
            if len(header) < 24:
                raise CaptureFormatError(str(self.path), "pcap file header is truncated")
            order, tick = PCAP_MAGICS[header[:4]]
            _vmaj, _vmin, _zone, _sig, _snap, network = struct.unpack(order + "HHiIII", header[4:])
            linktype = network & 0x0FFFFFFF  # upper bits carry FCS information
            u32 = struct.Struct(order + "I").unpack_from
            rest = b""
            self.stats.bytes_read = 24
            while (chunk := _fill(f, rest)) is not None:
                buf, n = chunk
                offs: list[int] = []
                append = offs.append
                off = 0
                damage = None
                while off + 16 <= n:
                    caplen = u32(buf, off + 8)[0]
                    if caplen > MAX_RECORD_BYTES:
                        damage = (
                            f"record at byte {self.stats.bytes_read + off} claims {caplen} "
                            "captured bytes: the file is corrupt from there on"
                        )
                        break
                    if off + 16 + caplen > n:
                        break
                    append(off)
                    off += 16 + caplen
                rest = bytes(buf[off:n])
                self.stats.bytes_read += off
                # the records before the damage first (issue 16): they are whole and good
                if offs:
                    yield self._batch(buf, np.array(offs, dtype=np.int64), order, tick, linktype)
                if damage is not None:
                    raise CaptureFormatError(str(self.path), damage)
            if rest:
                self.stats.truncated_tail = True
                self.stats.tail = (
                    f"file ends inside a record ({len(rest)} bytes ignored at the end)"
                )
                self.stats.warnings.append(self.stats.tail)

    def _batch(
        self, buf: bytearray, offs: np.ndarray, order: str, tick: float, linktype: int
    ) -> RawBatch:
        arr = np.frombuffer(buf, dtype=np.uint8)
        u32 = np.ndarray((len(arr) - 3,), dtype=order + "u4", buffer=arr, strides=(1,))
        sec = u32[offs].astype(np.float64)
        frac = u32[offs + 4].astype(np.float64)
        caplens = u32[offs + 8].astype(np.int64)
        wirelens = u32[offs + 12].astype(np.int64)
        self.stats.packets += len(offs)
        return RawBatch(
            buf=arr,
            offsets=offs + 16,
            caplens=caplens,
            wirelens=wirelens,
            ts=sec + frac * tick,
            linktypes=np.full(len(offs), linktype, dtype=np.int64),
            interface=self.path.name,
        )


@dataclass(slots=True)
class _Interface:
    linktype: int
    snaplen: int
    tick: float  # seconds per timestamp unit
    name: str | None


class PcapngReader(CaptureReader):
    """pcapng: sections, several interfaces with their own link types and time resolutions."""

    def batches(self) -> Iterator[RawBatch]:
        ifaces: list[_Interface] = []
        order = "<"
        with self.path.open("rb") as f:
            rest = b""
            base = 0  # file offset of buf[0]
            while (chunk := _fill(f, rest)) is not None:
                buf, n = chunk
                epbs: list[int] = []  # whole, readable enhanced packet blocks not yet yielded
                append = epbs.append
                off = 0
                damage = None
                hdr = struct.Struct(order + "II").unpack_from
                epb_fields = struct.Struct(order + "IIII").unpack_from  # if_id, ts hi, lo, caplen
                while off + 12 <= n:
                    btype, blen = hdr(buf, off)
                    if btype == PCAPNG_SHB:
                        # a new section may switch byte order: finish what we have first
                        if epbs:
                            yield self._batch(buf, epbs, order, ifaces)
                            epbs = []
                            append = epbs.append
                        bom = buf[off + 8 : off + 12]
                        order = (
                            "<" if struct.unpack("<I", bom)[0] == PCAPNG_BYTE_ORDER_MAGIC else ">"
                        )
                        if struct.unpack(order + "I", bom)[0] != PCAPNG_BYTE_ORDER_MAGIC:
                            damage = f"bad section byte-order magic at byte {base + off}"
                            break
                        hdr = struct.Struct(order + "II").unpack_from
                        epb_fields = struct.Struct(order + "IIII").unpack_from
                        btype, blen = hdr(buf, off)
                        ifaces = []
                    if blen < 12 or blen % 4 or blen > MAX_RECORD_BYTES + 64:
                        damage = (
                            f"block at byte {base + off} has invalid length {blen}: "
                            "the file is corrupt from there on"
                        )
                        break
                    if off + blen > n:
                        break
                    if btype == BLOCK_EPB:
                        damage = self._bad_epb(epb_fields(buf, off + 8), blen, len(ifaces))
                        if damage is not None:
                            damage = f"packet block at byte {base + off} {damage}"
                            break
                        append(off)
                    elif btype == BLOCK_IDB:
                        ifaces.append(self._parse_idb(buf, off, blen, order))
                    elif btype in (BLOCK_SPB, BLOCK_OPB):
                        if epbs:
                            yield self._batch(buf, epbs, order, ifaces)
                            epbs = []
                            append = epbs.append
                        yield self._legacy_block(buf, off, btype, order, ifaces)
                    off += blen
                # the blocks before any damage first (issue 16): they are whole and readable
                if epbs:
                    yield self._batch(buf, epbs, order, ifaces)
                rest = bytes(buf[off:n])
                base += off
                self.stats.bytes_read = base
                if damage is not None:
                    raise CaptureFormatError(str(self.path), damage)
            if rest:
                self.stats.truncated_tail = True
                self.stats.tail = f"file ends inside a block ({len(rest)} bytes ignored at the end)"
                self.stats.warnings.append(self.stats.tail)

    @staticmethod
    def _bad_epb(fields: tuple[int, ...], blen: int, interfaces: int) -> str | None:
        """Why an enhanced packet block (its if_id, ts high, ts low, caplen) cannot be read
        when `interfaces` interfaces are described, or None when it can."""
        if_id, _ts_hi, _ts_lo, caplen = fields
        if if_id >= interfaces:
            return "refers to an interface that was never described"
        if caplen > blen - 32:
            return "is shorter than its captured length"
        return None

    def _parse_idb(self, buf: bytearray, off: int, blen: int, order: str) -> _Interface:
        linktype, _res, snaplen = struct.unpack_from(order + "HHI", buf, off + 8)
        tick, name = 1e-6, None
        opt, end = off + 16, off + blen - 4
        while opt + 4 <= end:
            code, olen = struct.unpack_from(order + "HH", buf, opt)
            if code == 0:
                break
            val = buf[opt + 4 : opt + 4 + olen]
            if code == 9 and olen >= 1:  # if_tsresol
                r = val[0]
                tick = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0**-r
            elif code == 2:  # if_name
                name = val.decode("utf-8", "replace")
            opt += 4 + ((olen + 3) & ~3)
        return _Interface(linktype, snaplen, tick, name)

    def _batch(
        self, buf: bytearray, epbs: list[int], order: str, ifaces: list[_Interface]
    ) -> RawBatch:
        """The packets of enhanced packet blocks `epbs`, all readable (`_first_bad()`)."""
        arr = np.frombuffer(buf, dtype=np.uint8)
        u32 = np.ndarray((len(arr) - 3,), dtype=order + "u4", buffer=arr, strides=(1,))
        offs = np.array(epbs, dtype=np.int64)
        if_ids = u32[offs + 8].astype(np.int64)
        ticks_hi = u32[offs + 12].astype(np.uint64)
        ticks_lo = u32[offs + 16].astype(np.uint64)
        ticks = (ticks_hi << np.uint64(32)) | ticks_lo
        tick_of = np.array([i.tick for i in ifaces], dtype=np.float64)[if_ids]
        per_sec = np.rint(1.0 / tick_of).astype(np.uint64)
        ts = (ticks // per_sec).astype(np.float64) + (ticks % per_sec).astype(np.float64) * tick_of
        caplens = u32[offs + 20].astype(np.int64)
        self.stats.packets += len(offs)
        names = {i.name for i in ifaces if i.name}
        return RawBatch(
            buf=arr,
            offsets=offs + 28,
            caplens=caplens,
            wirelens=u32[offs + 24].astype(np.int64),
            ts=ts,
            linktypes=np.array([i.linktype for i in ifaces], dtype=np.int64)[if_ids],
            interface=names.pop() if len(names) == 1 else self.path.name,
        )

    def _legacy_block(
        self, buf: bytearray, off: int, btype: int, order: str, ifaces: list[_Interface]
    ) -> RawBatch:
        """Simple (SPB) and obsolete (OPB) packet blocks: rare, decoded one at a time."""
        if not ifaces:
            raise CaptureFormatError(str(self.path), "packet block before any interface block")
        if btype == BLOCK_SPB:
            (wirelen,) = struct.unpack_from(order + "I", buf, off + 8)
            iface, ts, data_off = ifaces[0], 0.0, off + 12
            caplen = min(wirelen, iface.snaplen or wirelen)
        else:
            if_id, _drops, hi, lo, caplen, wirelen = struct.unpack_from(
                order + "HHIIII", buf, off + 8
            )
            if if_id >= len(ifaces):
                raise CaptureFormatError(str(self.path), "packet block for an unknown interface")
            iface, data_off = ifaces[if_id], off + 28
            ts = ((hi << 32) | lo) * iface.tick
        self.stats.packets += 1
        arr = np.frombuffer(buf, dtype=np.uint8)
        one = np.array([data_off], dtype=np.int64)
        return RawBatch(
            buf=arr,
            offsets=one,
            caplens=np.array([caplen], dtype=np.int64),
            wirelens=np.array([wirelen], dtype=np.int64),
            ts=np.array([ts], dtype=np.float64),
            linktypes=np.array([iface.linktype], dtype=np.int64),
            interface=iface.name or self.path.name,
        )
