"""Live capture from one interface: AF_PACKET SOCK_DGRAM, a hand-written BPF filter, TPACKET_V3.

The kernel strips any link header (SOCK_DGRAM), so every packet starts at its IP header and is
emitted as LINKTYPE_RAW; the filter keeps TCP/UDP and returns `snaplen`, so only headers are
copied into the mmap'd ring. Each ready ring block is copied whole into one RawBatch buffer::

    with LiveSource("wg0") as source:
        batch = source.read_batch(0.5)   # None when nothing arrived in time
        packets, drops = source.stats()
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import select
import socket
import struct
import time

import numpy as np

from tunnelacct.capture.batch import BUF_PAD, RawBatch
from tunnelacct.errors import CaptureError

log = logging.getLogger(__name__)

LINKTYPE_RAW = 101

# <linux/if_packet.h>, <linux/if_ether.h>, <asm-generic/socket.h>, <linux/filter.h>
SOL_PACKET = 263
PACKET_RX_RING, PACKET_STATISTICS, PACKET_VERSION = 5, 6, 10
TPACKET_V3 = 2
TP_STATUS_KERNEL, TP_STATUS_USER = 0, 1
SO_ATTACH_FILTER = 26
ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
IPPROTO_TCP, IPPROTO_UDP = 6, 17
# RFC 8200 section 4: hop-by-hop, routing, fragment, destination options precede TCP/UDP.
IPV6_EXTENSION_HEADERS = (0, 43, 44, 60)
FRAME_BYTES = 2048  # TPACKET_V3 packs packets tightly; the frame size only has to divide a block

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1 (block_status, ...)
_BLOCK = struct.Struct("=IIIIII")  # version, priv, block_status, num_pkts, first_pkt, blk_len
_BLOCK_STATUS = struct.Struct("=I")
_BLOCK_STATUS_AT = 8
_NEXT = struct.Struct("=I").unpack_from  # tpacket3_hdr.tp_next_offset
_REQ3 = struct.Struct("=7I")  # struct tpacket_req3
_STATS3 = struct.Struct("=3I")  # struct tpacket_stats_v3: tp_packets, tp_drops, tp_freeze_q_cnt
_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
# Field offsets inside struct tpacket3_hdr (all u32 but tp_mac/tp_net, which are u16).
HDR_SEC, HDR_NSEC, HDR_SNAPLEN, HDR_LEN, HDR_NET = 4, 8, 12, 16, 26

# Classic BPF opcodes (<linux/bpf_common.h>) and the skb->protocol ancillary load.
LD_W_ABS, LD_B_ABS, JEQ_K, RET_K = 0x20, 0x30, 0x15, 0x06
SKF_AD_PROTOCOL = 0xFFFFF000  # SKF_AD_OFF (-0x1000) + SKF_AD_PROTOCOL (0), as a u32


def bpf_program(snaplen: int) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k): TCP/UDP over IPv4/IPv6 -> `snaplen` bytes, else 0.

    On a SOCK_DGRAM socket offset 0 is the network header, whatever the link type::

        0  ld   skb->protocol
        1  jeq  #0x0800        -> 3           IPv4
        2  jeq  #0x86dd  -> 6, else -> 13     IPv6
        3  ldb  [9]                           IPv4 protocol (set in every fragment)
        4  jeq  #6      -> 14
        5  jeq  #17     -> 14, else -> 13
        6  ldb  [6]                           IPv6 next header
        7  jeq  #6      -> 14
        8  jeq  #17     -> 14
        9  jeq  #0      -> 14                 hop-by-hop options: userspace walks the chain
        10 jeq  #43     -> 14                 routing
        11 jeq  #44     -> 14                 fragment
        12 jeq  #60     -> 14, else -> 13     destination options
        13 ret  #0                            reject
        14 ret  #snaplen                      accept, copy at most snaplen bytes
    """
    reject, accept = 13, 14
    prog = [
        (LD_W_ABS, 0, 0, SKF_AD_PROTOCOL),
        (JEQ_K, 3 - 2, 0, ETH_P_IP),
        (JEQ_K, 6 - 3, reject - 3, ETH_P_IPV6),
        (LD_B_ABS, 0, 0, 9),
        (JEQ_K, accept - 5, 0, IPPROTO_TCP),
        (JEQ_K, accept - 6, reject - 6, IPPROTO_UDP),
        (LD_B_ABS, 0, 0, 6),
    ]
    nexts = (IPPROTO_TCP, IPPROTO_UDP, *IPV6_EXTENSION_HEADERS)
    for i, nh in enumerate(nexts):
        pc = len(prog)
        last = i == len(nexts) - 1
        prog.append((JEQ_K, accept - pc - 1, reject - pc - 1 if last else 0, nh))
    prog += [(RET_K, 0, 0, 0), (RET_K, 0, 0, snaplen)]
    assert len(prog) == accept + 1
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class LiveSource:
    """Headers of every TCP/UDP packet crossing `interface`, read from a TPACKET_V3 ring."""

    def __init__(
        self,
        interface: str,
        *,
        snaplen: int = 96,
        block_size: int = 1 << 20,
        block_count: int = 64,
        block_timeout_ms: int = 100,
    ) -> None:
        self.interface, self.snaplen = interface, snaplen
        self.block_size, self.block_count = block_size, block_count
        if not 1 <= snaplen <= FRAME_BYTES - 128:
            raise CaptureError(interface, f"snaplen {snaplen} outside 1-{FRAME_BYTES - 128}")
        if block_size % mmap.PAGESIZE or block_size < FRAME_BYTES or block_count < 1:
            raise CaptureError(
                interface,
                f"ring of {block_count} x {block_size} bytes: blocks must be a multiple of "
                f"the page size ({mmap.PAGESIZE}) and at least {FRAME_BYTES} bytes",
            )
        self._packets = self._drops = 0
        self._next_block = 0
        self._ring: mmap.mmap | None = None
        self._sock: socket.socket | None = None
        try:
            # Protocol 0 receives nothing until bind(): no unfiltered packet slips in first.
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
            self._attach_filter()
            self._sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frames = block_size // FRAME_BYTES * block_count
            req = _REQ3.pack(block_size, block_count, FRAME_BYTES, frames, block_timeout_ms, 0, 0)
            self._sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._ring = mmap.mmap(self._sock.fileno(), block_size * block_count, mmap.MAP_SHARED)
            self._sock.bind((interface, ETH_P_ALL))
        except OSError as e:
            self.close()
            raise CaptureError(interface, _why(e), transient=e.errno in _TRANSIENT) from e
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN | select.POLLERR)
        log.info(
            "capture started on %s (snaplen=%d, ring=%d x %d KiB)",
            interface,
            snaplen,
            block_count,
            block_size // 1024,
        )

    def stop(self) -> None:
        """Accept no further packets (a reject-all filter); those in the ring can still be read.

        Shutdown calls this, drains with read_batch() until None, then reads stats(): every
        packet the kernel counted has then been read.
        """
        if self._sock is None:
            raise CaptureError(self.interface, "source is closed")
        self._attach_filter([(RET_K, 0, 0, 0)])

    def _attach_filter(self, program: list[tuple[int, int, int, int]] | None = None) -> None:
        assert self._sock is not None
        insns_list = bpf_program(self.snaplen) if program is None else program
        code = b"".join(_INSN.pack(*insn) for insn in insns_list)
        insns = ctypes.create_string_buffer(code, len(code))
        fprog = _SockFprog(len(code) // _INSN.size, ctypes.addressof(insns))
        # The kernel copies the program during the call, so `insns` need not outlive it.
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))

    def read_batch(self, timeout_s: float) -> RawBatch | None:
        """Every packet of the ring blocks ready within `timeout_s` seconds, or None."""
        if self._ring is None:
            raise CaptureError(self.interface, "source is closed")
        deadline = time.monotonic() + timeout_s
        while True:
            if self._block_ready(self._next_block):
                batch = self._take_ready_blocks()
                if len(batch):  # a retired block may be empty
                    return batch
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            for _fd, events in self._poll.poll(left_ms):
                if events & select.POLLERR:
                    self._raise_socket_error()
            if left_ms == 0 and not self._block_ready(self._next_block):
                return None

    def _block_ready(self, index: int) -> bool:
        assert self._ring is not None
        at = index * self.block_size + _BLOCK_STATUS_AT
        return bool(_BLOCK_STATUS.unpack_from(self._ring, at)[0] & TP_STATUS_USER)

    def _take_ready_blocks(self) -> RawBatch:
        """Copy consecutive ready blocks into one padded buffer, hand them back, gather fields."""
        ring = self._ring
        assert ring is not None
        chunks: list[bytes] = []
        offs: list[int] = []
        append = offs.append
        copied = 0
        for _ in range(self.block_count):
            if not self._block_ready(self._next_block):
                break
            base = self._next_block * self.block_size
            _v, _p, _status, count, first, used = _BLOCK.unpack_from(ring, base)
            used = min(used, self.block_size)
            off = first
            for _i in range(count):
                append(copied + off)
                off += _NEXT(ring, base + off)[0]
            chunks.append(ring[base : base + used])
            copied += used
            # Hand the block back only after copying it: the kernel refills it at once.
            _BLOCK_STATUS.pack_into(ring, base + _BLOCK_STATUS_AT, TP_STATUS_KERNEL)
            self._next_block = (self._next_block + 1) % self.block_count
        chunks.append(bytes(BUF_PAD))
        arr = np.frombuffer(bytearray(b"".join(chunks)), dtype=np.uint8)
        hdrs = np.array(offs, dtype=np.int64)
        u32 = np.ndarray((len(arr) - 3,), dtype="=u4", buffer=arr, strides=(1,))
        u16 = np.ndarray((len(arr) - 1,), dtype="=u2", buffer=arr, strides=(1,))
        sec = u32[hdrs + HDR_SEC].astype(np.float64)
        nsec = u32[hdrs + HDR_NSEC].astype(np.float64)
        return RawBatch(
            buf=arr,
            offsets=hdrs + u16[hdrs + HDR_NET].astype(np.int64),
            caplens=u32[hdrs + HDR_SNAPLEN].astype(np.int64),
            wirelens=u32[hdrs + HDR_LEN].astype(np.int64),
            ts=sec + nsec * 1e-9,
            linktypes=np.full(len(hdrs), LINKTYPE_RAW, dtype=np.int64),
            interface=self.interface,
        )

    def _raise_socket_error(self) -> None:
        assert self._sock is not None
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == errno.ENETDOWN:
            raise CaptureError(self.interface, "interface went down or was deleted", transient=True)
        raise CaptureError(self.interface, _why(OSError(code, errno.errorcode.get(code, "?"))))

    def stats(self) -> tuple[int, int]:
        """(packets, drops) since start: packets passed the filter, drops did not fit the ring.

        The kernel resets its counters on each read and counts drops within packets; this
        returns running totals with `packets` including `drops`, like tcpdump's "received".
        """
        if self._sock is None:
            raise CaptureError(self.interface, "source is closed")
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS3.size)
        packets, drops, _freezes = _STATS3.unpack(raw)
        self._packets += packets
        self._drops += drops
        return self._packets, self._drops

    def close(self) -> None:
        """Unmap the ring and close the socket; safe to call twice."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_TRANSIENT = (errno.ENODEV, errno.ENXIO, errno.ENETDOWN)


def _why(e: OSError) -> str:
    if e.errno in (errno.ENODEV, errno.ENXIO):
        return "no such interface"
    if e.errno in (errno.EPERM, errno.EACCES):
        return "permission denied (needs root or CAP_NET_RAW)"
    return e.strerror or str(e)
