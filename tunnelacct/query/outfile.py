"""Write a file whole or not at all: a temporary file beside it, renamed over it on success."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def replacing_bytes(target: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `target` when the block ends without an exception: written
    beside it, synced, then renamed over it, so a reader sees the previous file or the new one,
    never a part. On an exception the temporary file is removed and the previous file is left
    as it was. The new file has the usual mode (0666 less the umask), not mkstemp's 0600.
    """
    directory = target.parent
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def replacing(target: Path) -> Iterator[TextIO]:
    """`replacing_bytes()` as a text file (UTF-8, no newline translation)."""
    with replacing_bytes(target) as raw:
        out = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            yield out
        finally:
            out.detach()  # flushes; the binary file stays open for replacing_bytes to close
