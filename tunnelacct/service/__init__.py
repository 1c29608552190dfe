"""`tunnelacct serve`: the composition root (startup, run, shutdown), its listeners, and the
session event log."""
