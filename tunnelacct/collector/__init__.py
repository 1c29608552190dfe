"""Flow records over UDP (NetFlow v5/v9, IPFIX): the pure decoding layer.

`FlowDecoder.decode_datagram(payload, exporter, now)` turns one datagram into FlowRecords and
keeps per-exporter templates, options state, sequence accounting and counters by reason.
"""

from tunnelacct.collector.decode import FlowDecoder
from tunnelacct.collector.records import DecodeReason, FlowRecord
from tunnelacct.collector.templates import FieldSpec, Template, TemplateCache

__all__ = ["DecodeReason", "FieldSpec", "FlowDecoder", "FlowRecord", "Template", "TemplateCache"]
