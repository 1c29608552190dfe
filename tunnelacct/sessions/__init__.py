"""Sessions: the flow table (TCP and UDP rules, idle and linger expiry, port reuse), flow keys
and session ids, attribution at open from the config, WireGuard peers, and the session events
it emits. It imports no SQL, HTTP or metrics code: what observes flows is handed in."""
