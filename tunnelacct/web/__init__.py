"""The web API: the FastAPI app, bearer tokens, per-token query limits, and the ASGI guards."""
