"""Offline import: capture files -> decode -> flow table -> writer, as one continuous stream.

Files are ordered by their first packet time, so the parts of a rotated capture
(`tcpdump -C/-G`) join up and a session spanning two files stays one session. Reading and
decoding run in the decoder child (capture/filechild.py), which sends batches down a pipe; the
flow table runs on the event loop here and hands events to the writer child
(store/writerchild.py), which owns everything about the store: migration, the inventory, the
writes. This process never imports SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunnelacct.capture.child import Decoded
from tunnelacct.capture.filechild import DecodeProcess, first_timestamp
from tunnelacct.capture.pcapfile import open_capture
from tunnelacct.capture.reasons import SKIPPED_REASONS
from tunnelacct.config.model import Config
from tunnelacct.enums import CloseReason
from tunnelacct.errors import CaptureFormatError
from tunnelacct.heap import fewer_collections
from tunnelacct.sessions.attribution import Inventory
from tunnelacct.sessions.flowkey import SessionIds
from tunnelacct.sessions.flowtable import CLOSE_PART_SESSIONS, FlowTable
from tunnelacct.store.writerchild import WriterProcess, WriterSettings

log = logging.getLogger(__name__)


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
    replaced: int = 0  # stored sessions of an earlier capture of the same traffic, replaced
    late_packets: int = 0  # more than flowtable.LATE_S older than a packet before them
    seconds: float = 0.0  # wall time of the whole import, writes included
    warnings: list[str] = field(default_factory=list)
    failed_files: list[str] = field(default_factory=list)

    @property
    def packets_per_s(self) -> float:
        """End-to-end import rate."""
        return self.packets / self.seconds if self.seconds > 0 else 0.0


def order_files(paths: Sequence[str | Path], summary: ImportSummary) -> list[Path]:
    """The capture files among `paths` by first packet time; others are reported in summary."""
    files: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for p in map(Path, paths):
        try:
            open_capture(p)  # fail early on what is not a capture file
            st = p.stat()
            if (st.st_dev, st.st_ino) in seen:  # the same packets twice would count twice
                summary.warnings.append(f"{p}: given more than once; imported once")
                continue
            seen.add((st.st_dev, st.st_ino))
            files.append(p)
        except CaptureFormatError as e:
            summary.failed_files.append(str(e))  # reported once, by the caller
    files.sort(key=first_timestamp)
    summary.files = len(files)
    return files


async def import_files(
    files: list[Path],
    worker: DecodeProcess,
    config: Config,
    writer: WriterProcess,
    summary: ImportSummary,
    *,
    ids: SessionIds,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Sessionize what `worker` decodes from `files` and hand it to `writer`; fills summary.

    `ids` names the sessions: the writer tells this import's rows from earlier ones by it.
    """
    inventory = Inventory.from_config(config)
    table = FlowTable(
        config.timeouts,
        attribute=inventory.attribute,
        is_client=inventory.is_client_address,
        ids=ids,
        max_sessions=config.service.max_sessions,
    )
    done_bytes = [0] * len(files)
    try:
        while (msg := await asyncio.to_thread(worker.get)) is not None:
            if isinstance(msg, Decoded):
                for reason, n in msg.batch.failures.items():
                    bucket = summary.skipped if reason in SKIPPED_REASONS else summary.decode_errors
                    bucket[reason] += n
                # in a thread, so the loop stays free to drive the writer's round trips meanwhile
                await writer.submit(await asyncio.to_thread(table.process, msg.batch))
                at = msg.bytes_read
            else:
                summary.packets += msg.packets
                summary.warnings += [f"{files[msg.index]}: {w}" for w in msg.warnings]
                if msg.error:  # reported once, by the caller, with the summary
                    summary.failed_files.append(msg.error)
                at = msg.size_bytes
            if progress is not None and at > done_bytes[msg.index]:
                progress(at - done_bytes[msg.index])
                done_bytes[msg.index] = at
    except asyncio.CancelledError:
        # interrupted (Ctrl-C): what was read so far is still written, open sessions as shutdown
        worker.close()
        for events in table.close_all_in_parts(CloseReason.SHUTDOWN, CLOSE_PART_SESSIONS):
            await writer.submit(events)
        raise
    for events in table.close_all_in_parts(CloseReason.END_OF_CAPTURE, CLOSE_PART_SESSIONS):
        await writer.submit(events)
    st = table.stats
    summary.accounted_packets = st.packets - st.fragments_unattributed
    summary.accounted_bytes = st.bytes - st.fragment_bytes_unattributed
    summary.sessions = st.sessions_opened
    summary.unattributed_sessions = st.unattributed_sessions
    summary.closed = Counter(st.closed)
    summary.late_packets = st.late_packets
    evicted = st.closed[str(CloseReason.EVICTED)]
    if evicted:
        summary.warnings.append(
            f"{evicted:,} sessions were ended early as evicted: more than [service] max_sessions "
            f"({table.max_sessions:,}) were open at once; each was stored with its counters so "
            "far and its later packets opened a new session"
        )
    if st.fragments_unattributed:
        summary.decode_errors["fragment_unattributed"] += st.fragments_unattributed


async def _run(
    files: list[Path],
    worker: DecodeProcess,
    writer: WriterProcess,
    config: Config,
    summary: ImportSummary,
    progress: Callable[[int], None] | None,
) -> None:
    try:
        await import_files(
            files, worker, config, writer, summary, ids=writer.ids, progress=progress
        )
    finally:
        await writer.close()
    summary.rows_written = writer.rows_written
    summary.replaced = writer.replaced_rows


def import_captures(
    config: Config,
    paths: Sequence[str | Path],
    *,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Import `paths` and wait until every row is written.

    The decoder child reads and decodes, this process sessionizes, and the writer child
    (store/writerchild.py) migrates the store, writes the config's inventory and then the
    sessions: the three start at once, and the store's set-up overlaps the first batches.
    """
    started = time.perf_counter()
    summary = ImportSummary()
    files = order_files(paths, summary)
    worker = DecodeProcess(files)
    settings = WriterSettings(
        config=config,
        reimport=True,
        log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
    )
    writer = WriterProcess(settings, SessionIds())
    try:
        with fewer_collections():
            asyncio.run(_run(files, worker, writer, config, summary, progress))
    finally:
        worker.close()
        writer.kill()  # only if it still runs: the import failed before its close()
    summary.seconds = time.perf_counter() - started
    return summary
