"""SQLite's sessions layout (tables of one org and a span of days behind the sessions view) and
its part of a retention purge."""
