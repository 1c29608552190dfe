"""Metrics: traffic tallies of the flow tables, the Prometheus collectors read on scrape, and the
textfile an import writes."""
