"""Ingest: a [[capture]] through the flow table to its sinks (serve's pipeline), and the offline
import of capture files."""
