"""Database URLs: which ones tunnelacct can use, and how messages show them (the password
masked, a SQLite file as its absolute path)."""

from __future__ import annotations

import os
import re

_URL = re.compile(r"(sqlite|postgresql)(\+[A-Za-z0-9_]+)?://(.*)", re.DOTALL)
_URL_WHY = "expected sqlite:///relative.db, sqlite:////absolute.db or postgresql://host/dbname"


def database_url_problem(url: str) -> str | None:
    """Why `url` is not a database URL tunnelacct can use, or None when it is."""
    match = _URL.fullmatch(url)
    if match is None:
        return _URL_WHY
    rest = match[3]
    if match[1] == "sqlite" and (not rest.startswith("/") or rest == "/"):
        return "expected a file after sqlite:/// (relative) or sqlite://// (absolute)"
    if match[1] == "postgresql" and not rest:
        return _URL_WHY
    return None


def engine_name(url: str) -> str | None:
    """ "sqlite" or "postgresql", the engine of database URL `url`; None for any other URL."""
    match = _URL.fullmatch(url)
    return None if match is None else match[1]


def redact_url(url: str) -> str:
    """`url` with its password replaced by ***, for error messages."""
    return re.sub(r"(://[^/@:]*:)[^@/]*@", r"\1***@", url)


def sqlite_file(url: str) -> str | None:
    """The file path of a SQLite URL as written (`sqlite:///x.db` -> `x.db`, `sqlite:////a/x.db`
    -> `/a/x.db`, any query string cut); None for PostgreSQL, `:memory:` and `file:` URIs."""
    match = _URL.fullmatch(url)
    if match is None or match[1] != "sqlite":
        return None
    path = match[3].removeprefix("/").split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return path


def with_sqlite_base(url: str, base: str) -> str:
    """`url` with a relative SQLite file (and `~`) resolved against the directory `base`;
    any other URL unchanged."""
    path = sqlite_file(url)
    if path is None:
        return url
    absolute = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
    prefix = url[: url.index("://") + 3]
    query = url[len(prefix) + 1 + len(path) :]
    return f"{prefix}/{absolute}{query}"


def shown_database(url: str) -> str:
    """How messages name the store: a SQLite file as its path, anything else as its URL with
    the password masked."""
    path = sqlite_file(url)
    if path is None:
        return redact_url(url)
    return os.path.abspath(os.path.expanduser(path))
