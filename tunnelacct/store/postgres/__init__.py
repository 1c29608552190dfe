"""PostgreSQL's own parts of the store: the day partitions of sessions and its error codes."""
