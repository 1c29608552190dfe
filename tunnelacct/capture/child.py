"""The one decoder child: a spawned process that reads a packet source and decodes its batches,
so reading and decoding use their own core and GIL and leave the parent's to the flow table and
the writer. Every source runs in it the same way (`FileSource` for capture files, in
`filechild.py`; `LiveRingSource` for an interface, in `livechild.py`).

One protocol, one way: the child sends messages down a pipe, the parent reads them.

    Started                      the source opened; or
    Failed(why, transient)       it could not open, or failed later (the last message)
    Decoded(index, batch, bytes_read)   a decoded batch (narrow dtypes on the way)
    FileDone(...)                a capture file was read to its end
    Ended                        the source is done: every file read, or drained after stop()

The child holds the pipe's only write end, so a child that dies, even in the middle of a
message, is an end of file to the parent (ChildEnded), never a read that waits for ever. In the
child a sender thread writes what the decoder pickled, with at most a few batches waiting, so
decoding goes on while a batch is on its way; a full pipe blocks the child: a slow parent stops
it reading (a file waits; a live ring fills and the kernel counts what overflows it). The child
dies with its parent (PR_SET_PDEATHSIG), so a `kill -9` of the parent leaves no child behind,
and leaves SIGINT to the parent. `stop()` asks the source to end; `counts()` reads the two
counters a source may keep (the live ring's packets and drops).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from tunnelacct.capture.decode import DecodedBatch
from tunnelacct.errors import CaptureError, CaptureFormatError

QUEUE_BATCHES = 4  # decoded batches waiting in the child to be sent (each of 1 MiB of capture)
POLL_S = 0.5  # how often a waiting parent checks that the child still runs
CLOSE_GRACE_S = 0.5  # close(): how long a child that was asked to stop may take to end
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(slots=True)
class Started:
    """The source opened in the child."""


@dataclass(slots=True)
class Failed:
    """The source could not open, or failed: the child's last message."""

    why: str
    transient: bool = False  # retrying may help (an interface that is missing or went down)


@dataclass(slots=True)
class Decoded:
    """One decoded batch, of file `index` (0 for a live source), and how far into that file
    reading has got."""

    index: int
    batch: DecodedBatch
    bytes_read: int


@dataclass(slots=True)
class FileDone:
    """A file was read to its end (or to the first corrupt record: see `error`)."""

    index: int
    packets: int
    size_bytes: int
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(slots=True)
class Ended:
    """The source is done; nothing follows."""


Message = Started | Failed | Decoded | FileDone | Ended


class ChildSource(Protocol):
    """A packet source as the decoder child runs it. It is pickled to the child, so it holds
    only what opens it (paths, an interface and its options)."""

    name: str  # the child process's name, after "tunnelacct-"

    def open(self) -> None:
        """In the child: open the source; raises CaptureError or CaptureFormatError."""

    def messages(self, stop: Any, counts: Any) -> Iterator[Decoded | FileDone]:
        """In the child: the source's Decoded and FileDone messages, until it is done or, once
        the event `stop` is set, drained; `counts` is a shared array of two counters it may
        keep current. Raises CaptureError when it fails."""

    def close(self) -> None:
        """In the child: release what open() took."""


# Narrow dtypes for the trip through the pipe (half the bytes of int64 everywhere); the
# parent widens them back, so the flow engine always sees int64.
_NARROW = {
    "family": np.uint8,
    "proto": np.uint8,
    "sport": np.uint16,
    "dport": np.uint16,
    "ip_bytes": np.int32,
    "payload_bytes": np.int32,
    "flags": np.uint8,
    "frag": np.uint8,
    "frag_id": np.uint32,
}


def narrow(b: DecodedBatch) -> DecodedBatch:
    """The batch with narrow integer dtypes, for the trip through a pipe."""
    return replace(b, **{k: getattr(b, k).astype(t) for k, t in _NARROW.items()})


def widen(b: DecodedBatch) -> DecodedBatch:
    """The batch back with int64 everywhere, as the flow table expects."""
    return replace(b, **{k: getattr(b, k).astype(np.int64) for k in _NARROW})


class _Sender:
    """The child's end of the pipe: messages are pickled by the caller and written by a thread,
    at most `depth` of them waiting. Once the parent is gone, or has closed its end, what is
    sent is dropped, so the child never blocks on a pipe that nobody reads."""

    def __init__(self, conn: Any, depth: int) -> None:
        self._conn = conn
        self._waiting: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._write, name="sender", daemon=True)
        self._thread.start()

    def send(self, message: Message) -> None:
        """Queue `message`; blocks while `depth` messages wait to be written."""
        self._waiting.put(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def _write(self) -> None:
        reader_gone = False
        while (payload := self._waiting.get()) is not None:
            if reader_gone:
                continue
            try:
                self._conn.send_bytes(payload)
            except OSError:  # EPIPE: nobody will read the rest
                reader_gone = True
        self._conn.close()

    def finish(self) -> None:
        """Write what waits, then close the pipe: the parent reads its end of file."""
        self._waiting.put(None)
        self._thread.join()


def _run_in_child(
    source: ChildSource, conn: Any, stop: Any, counts: Any, parent_pid: int, depth: int
) -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    out = _Sender(conn, depth)
    try:
        _send_messages(source, out, stop, counts)
    finally:
        out.finish()


def _send_messages(source: ChildSource, out: _Sender, stop: Any, counts: Any) -> None:
    try:
        source.open()
    except CaptureError as e:
        out.send(Failed(e.why, e.transient))
        return
    except CaptureFormatError as e:
        out.send(Failed(str(e)))
        return
    out.send(Started())
    try:
        for message in source.messages(stop, counts):
            out.send(message)
        out.send(Ended())
    except CaptureError as e:
        out.send(Failed(e.why, e.transient))
    finally:
        source.close()


class ChildEnded(Exception):
    """The decoder child ended without a last message (killed, or a crash)."""

    def __init__(self, exit_code: int | None) -> None:
        self.exit_code = exit_code
        super().__init__(f"exit code {exit_code}")


class DecoderChild:
    """A `source` run by the decoder child; `next_message()` reads what it sends."""

    def __init__(self, source: ChildSource, *, queue_batches: int = QUEUE_BATCHES) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs threads and an event loop
        self._conn, child_conn = ctx.Pipe(duplex=False)
        self._stop = ctx.Event()
        self._counts = ctx.Array("q", 2)
        self._proc = ctx.Process(
            target=_run_in_child,
            args=(source, child_conn, self._stop, self._counts, os.getpid(), queue_batches),
            name=f"tunnelacct-{source.name}",
            daemon=True,
        )
        try:
            self._proc.start()
        finally:
            child_conn.close()  # the child holds the only write end: its exit ends the pipe
        self.ended = False  # Ended or Failed was read: nothing follows

    def next_message(self, timeout_s: float | None = None) -> Message | None:
        """The child's next message within `timeout_s` (None: wait as long as it runs), or
        None; a Decoded batch comes back widened. Raises ChildEnded when the child is gone
        without its last message."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait_s = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if self._conn.poll(max(0.0, wait_s)):
                return self._received(self._receive())
            if not self._proc.is_alive() and not self._conn.poll(0):
                raise ChildEnded(self._proc.exitcode)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _receive(self) -> Message:
        """One whole message; ChildEnded at the end of the pipe, even inside a message."""
        try:
            message: Message = self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(timeout=CLOSE_GRACE_S)  # for its exit code
            raise ChildEnded(self._proc.exitcode) from None
        return message

    def _received(self, message: Message) -> Message:
        if isinstance(message, Decoded):
            message.batch = widen(message.batch)
        elif isinstance(message, Ended | Failed):
            self.ended = True
        return message

    def stop(self) -> None:
        """Ask the source to end: a live one is drained, then Ended follows."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return bool(self._stop.is_set())

    def counts(self) -> tuple[int, int]:
        """The two counters the source keeps (the live ring's packets and drops)."""
        return int(self._counts[0]), int(self._counts[1])

    def close(self) -> None:
        """End the child, however far it got, and close the pipe; idempotent."""
        self._stop.set()
        self._conn.close()  # a child still sending is told nobody reads (EPIPE)
        self._proc.join(timeout=CLOSE_GRACE_S if self.ended else 0)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=2)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)

    @property
    def pid(self) -> int | None:
        """The child's process id (None before it started)."""
        return self._proc.pid
