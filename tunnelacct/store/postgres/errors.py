"""PostgreSQL's error codes (SQLSTATE, PostgreSQL manual, Appendix A) as the drivers carry them."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE (e.g. "55P03") of a DBAPIError or of an asyncpg error raised
    directly (the COPY path); None for other errors."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None
