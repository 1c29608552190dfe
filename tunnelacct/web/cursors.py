"""The keyset cursor of a page of sessions, as the API and the web UI hand it out: the
(started_at, id) key of a row, in URL-safe base64 of JSON, opaque to the caller."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime

from tunnelacct.web.errors import BadParameter


def encode_cursor(started_at: datetime, ident: uuid.UUID) -> str:
    """The cursor of the row keyed (started_at, ident)."""
    raw = json.dumps([started_at.isoformat(), ident.hex]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The key a cursor holds; BadParameter("cursor") when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, ident = json.loads(raw)
        if not isinstance(when, str) or not isinstance(ident, str):
            raise TypeError("a cursor is [started_at, id], both strings")
        started_at = datetime.fromisoformat(when)
        if started_at.tzinfo is None:
            raise ValueError("a cursor's started_at has an offset")
        return started_at.astimezone(UTC), uuid.UUID(hex=ident)
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error) as e:
        raise BadParameter("cursor", f"bad cursor {cursor!r}: use next_cursor of a page") from e
