"""The store: engines and URLs, the SQLModel tables, the Alembic migrations shipped with the
package, session events as rows, the writer (the only code that writes sessions), the locks,
and each engine's own layout (`sqlite/`; PostgreSQL's partitions in `engine`)."""
