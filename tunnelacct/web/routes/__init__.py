"""The API's routes, one module per kind: probes, orgs, admin, sessions."""
