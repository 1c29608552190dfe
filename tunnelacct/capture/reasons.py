"""Each packet's outcome in the decoder: decoded (OK), or one counted reason why not.

It imports nothing heavy: metrics and the status read these names without loading the decoder.
"""

from __future__ import annotations

# Reason codes. 0 = decoded. "Skipped" reasons are valid traffic that is not TCP/UDP.
OK = 0
REASONS = (
    "ok",
    "unsupported_linktype",
    "truncated_link_header",
    "not_ip",
    "truncated_ip_header",
    "bad_ip_version",
    "bad_ip_header_length",
    "bad_ip_total_length",
    "ip_length_exceeds_frame",
    "truncated_ipv6_extension",
    "too_many_ipv6_extensions",
    "other_protocol",
    "truncated_tcp_header",
    "bad_tcp_header_length",
    "truncated_udp_header",
    "bad_udp_length",
    "bad_timestamp",  # before 1970, after the year 9999, or over a day after it was decoded
)
# Valid traffic that is not TCP or UDP: counted as skipped, not as decode errors.
SKIPPED_REASONS = frozenset({"not_ip", "other_protocol"})
