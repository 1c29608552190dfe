"""Offline import: capture files -> decode -> flow table -> writer, as one continuous stream.

Files are ordered by their first packet time, so the parts of a rotated capture
(`tcpdump -C/-G`) join up and a session spanning two files stays one session. Reading and
decoding run in a thread (numpy releases the GIL for most of it) that feeds a bounded queue;
the flow table runs on the event loop and hands events to the writer.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunnelacct.config import Config
from tunnelacct.decode import SKIPPED_REASONS, DecodedBatch, decode
from tunnelacct.enums import CloseReason
from tunnelacct.errors import CaptureFormatError
from tunnelacct.flowtable import FlowTable
from tunnelacct.identity import Inventory
from tunnelacct.sources.pcapfile import CaptureReader, open_capture
from tunnelacct.store import make_engine, migrate, sync_inventory
from tunnelacct.writer import SessionWriter

log = logging.getLogger(__name__)

QUEUE_BATCHES = 4  # decoded batches waiting for the flow table (each up to ~4 MB of capture)


@dataclass(slots=True)
class ImportSummary:
    """What an import read, decoded and stored."""

    files: int = 0
    packets: int = 0  # records read from the files
    accounted_packets: int = 0  # TCP/UDP packets added to sessions
    accounted_bytes: int = 0
    sessions: int = 0
    unattributed_sessions: int = 0
    closed: Counter[str] = field(default_factory=Counter)
    decode_errors: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # valid but not TCP/UDP
    rows_written: int = 0
    seconds: float = 0.0  # wall time of the whole import, writes included
    warnings: list[str] = field(default_factory=list)
    failed_files: list[str] = field(default_factory=list)

    @property
    def packets_per_s(self) -> float:
        """End-to-end import rate."""
        return self.packets / self.seconds if self.seconds > 0 else 0.0


def session_namespace(gateway: str) -> uuid.UUID:
    """Namespace of session ids: the same packets on the same gateway give the same ids, so
    importing a file twice updates its rows instead of duplicating them."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"tunnelacct:gateway:{gateway}")


def _first_ts(reader: CaptureReader) -> float:
    try:
        for raw in open_capture(reader.path).batches():  # a fresh reader: stats stay untouched
            if len(raw):
                return float(raw.ts[0])
    except CaptureFormatError:
        pass
    return float("inf")


_Item = tuple[CaptureReader, DecodedBatch | CaptureFormatError | None]


class _DecodeThread(threading.Thread):
    """Reads and decodes every file in order into a bounded queue; None marks the end."""

    def __init__(self, readers: list[CaptureReader]) -> None:
        super().__init__(name="tunnelacct-decode", daemon=True)
        self.readers = readers
        self.out: queue.Queue[_Item | None] = queue.Queue(maxsize=QUEUE_BATCHES)
        self.cancelled = threading.Event()

    def _put(self, item: _Item | None) -> None:
        while not self.cancelled.is_set():
            try:
                self.out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        try:
            for reader in self.readers:
                try:
                    for raw in reader.batches():
                        if self.cancelled.is_set():
                            return
                        self._put((reader, decode(raw)))
                except CaptureFormatError as e:
                    self._put((reader, e))
                self._put((reader, None))
        finally:
            self._put(None)


async def import_files(
    paths: Sequence[str | Path],
    config: Config,
    writer: SessionWriter,
    *,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Import capture files into the store through `writer`; `progress` gets bytes read."""
    summary = ImportSummary()
    inventory = Inventory.from_config(config)
    table = FlowTable(
        config.timeouts,
        attribute=inventory.attribute,
        is_client=inventory.is_client_address,
        id_namespace=session_namespace(config.gateway),
    )
    readers: list[CaptureReader] = []
    for p in paths:
        try:
            readers.append(open_capture(p))
        except CaptureFormatError as e:
            summary.failed_files.append(str(e))
            log.error("%s", e)
    readers.sort(key=_first_ts)
    summary.files = len(readers)
    worker = _DecodeThread(readers)
    worker.start()
    done_bytes: dict[CaptureReader, int] = Counter()
    try:
        while (item := await asyncio.to_thread(worker.out.get)) is not None:
            reader, got = item
            if isinstance(got, DecodedBatch):
                for reason, n in got.failures.items():
                    bucket = summary.skipped if reason in SKIPPED_REASONS else summary.decode_errors
                    bucket[reason] += n
                await writer.submit(table.process(got))
                at = reader.stats.bytes_read
            elif isinstance(got, CaptureFormatError):
                summary.failed_files.append(str(got))
                log.error("%s (packets before it were imported)", got)
                continue
            else:  # the file is done
                summary.packets += reader.stats.packets
                summary.warnings += [f"{reader.path}: {w}" for w in reader.stats.warnings]
                at = reader.size_bytes
            if progress is not None and at > done_bytes[reader]:
                progress(at - done_bytes[reader])
                done_bytes[reader] = at
    finally:
        worker.cancelled.set()
    await writer.submit(table.close_all(CloseReason.END_OF_CAPTURE))
    st = table.stats
    summary.accounted_packets = st.packets - st.fragments_unattributed
    summary.accounted_bytes = st.bytes - st.fragment_bytes_unattributed
    summary.sessions = st.sessions_opened
    summary.unattributed_sessions = st.unattributed_sessions
    summary.closed = Counter(st.closed)
    if st.fragments_unattributed:
        summary.decode_errors["fragment_unattributed"] += st.fragments_unattributed
    return summary


async def _run(
    config: Config, paths: Sequence[str | Path], progress: Callable[[int], None] | None
) -> ImportSummary:
    started = time.perf_counter()
    engine = make_engine(config.database.url)
    try:
        await sync_inventory(engine, config)
        writer = SessionWriter(engine, config.writer, gateway=config.gateway)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer.run())
            try:
                summary = await import_files(paths, config, writer, progress=progress)
            finally:
                await writer.close()
        summary.rows_written = writer.rows_written
        summary.seconds = time.perf_counter() - started
        return summary
    finally:
        await engine.dispose()


def import_captures(
    config: Config,
    paths: Sequence[str | Path],
    *,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Migrate the store, then import `paths` and wait until every row is written."""
    migrate(config.database.url)
    return asyncio.run(_run(config, paths, progress))
