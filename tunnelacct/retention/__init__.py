"""Retention: purges of each org's expired sessions, whole partitions where possible, the rest in
budgeted batches, each run recorded."""
