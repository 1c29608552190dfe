"""The web UI (issue 19): server-rendered pages over the API's own query, export, report and
scoping functions; `site.add_ui(app)` mounts them in the API's app."""
