"""The decoder child's pipe (capture/child.py), with made-up sources of known batches.

The oracles: batches recomputed from their packet numbers, the kernel's wait channel of a child
blocked writing its pipe (/proc/<pid>/task/*/wchan), and the exit status of a child the test
killed itself.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.childsources import NumberedSource, numbered_batch
from tests.helpers.waiting import WAIT_S, wait_until
from tunnelacct.capture.child import (
    ChildEnded,
    Decoded,
    DecoderChild,
    Ended,
    FileDone,
    Message,
    Started,
)

BIG_BATCH_PACKETS = 200_000  # ~12 MB a message: far more than a pipe holds (64 KiB)


def _waits_writing_a_pipe(pid: int) -> bool:
    """Whether a thread of process `pid` sleeps in the kernel writing a pipe (its wait channel),
    that is: the child is part-way through a message its reader does not read."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        if "pipe_write" in (task / "wchan").read_text():
            return True
    return False


def _blocked_inside_a_message(child: DecoderChild) -> DecoderChild:
    """Wait until the child, whose reader reads nothing, is stuck part-way through a message."""
    assert child.pid is not None
    pid = child.pid
    wait_until(lambda: _waits_writing_a_pipe(pid), "child blocked writing a big batch")
    return child


def _in_a_thread(read: DecoderChild) -> tuple[threading.Thread, list[object]]:
    """next_message() in a thread, so a read that never returns fails the test, not hangs it."""
    outcome: list[object] = []

    def read_one() -> None:
        try:
            outcome.append(read.next_message())
        except ChildEnded as e:
            outcome.append(e)

    thread = threading.Thread(target=read_one, daemon=True)
    thread.start()
    return thread, outcome


def test_batches_arrive_whole_and_in_order_then_the_end() -> None:
    batches, packets = 4, 50_000
    child = DecoderChild(NumberedSource(batches, packets))
    try:
        received: list[Message | None] = []
        while not child.ended:
            received.append(child.next_message(WAIT_S))
        assert isinstance(received[0], Started)
        decoded = [m for m in received if isinstance(m, Decoded)]
        assert len(decoded) == batches
        for index, message in enumerate(decoded):
            expected = numbered_batch(index * packets, packets)
            for column in ("ts", "family", "proto", "src_lo", "dst_hi", "sport", "ip_bytes"):
                got = getattr(message.batch, column)
                np.testing.assert_array_equal(got, getattr(expected, column), err_msg=column)
            assert message.batch.sport.dtype == np.int64  # widened back after the trip
            assert message.bytes_read == (index + 1) * packets
        assert isinstance(received[-2], FileDone)
        assert isinstance(received[-1], Ended)
        # nothing follows the end: the pipe is closed by a child that exited normally
        with pytest.raises(ChildEnded) as after_the_end:
            child.next_message(WAIT_S)
        assert after_the_end.value.exit_code == 0
    finally:
        child.close()


def test_a_child_killed_inside_a_message_is_child_ended_not_a_read_for_ever() -> None:
    child = DecoderChild(NumberedSource(3, BIG_BATCH_PACKETS))
    try:
        assert isinstance(child.next_message(WAIT_S), Started)
        _blocked_inside_a_message(child)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        thread, outcome = _in_a_thread(child)
        thread.join(WAIT_S)
        assert not thread.is_alive(), "next_message() still reads a pipe whose writer died"
        assert len(outcome) == 1 and isinstance(outcome[0], ChildEnded), outcome
        assert outcome[0].exit_code == -signal.SIGKILL
    finally:
        child.close()


def test_a_source_that_crashes_ends_after_what_it_sent() -> None:
    child = DecoderChild(NumberedSource(2, 1_000, crash=True))
    try:
        received = [child.next_message(WAIT_S) for _ in range(3)]
        assert [type(m) for m in received] == [Started, Decoded, Decoded]
        with pytest.raises(ChildEnded) as crashed:
            child.next_message(WAIT_S)
        assert crashed.value.exit_code == 1  # the traceback's exit, not a last message
        assert not child.ended
    finally:
        child.close()


def test_close_ends_a_child_blocked_on_a_pipe_nobody_reads() -> None:
    child = _blocked_inside_a_message(DecoderChild(NumberedSource(5, BIG_BATCH_PACKETS)))
    pid = child.pid
    assert pid is not None
    closing = threading.Thread(target=child.close, daemon=True)
    closing.start()
    closing.join(WAIT_S)
    assert not closing.is_alive(), "close() waits on a child blocked writing"
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(pid, 0)
    child.close()  # again: nothing to do
