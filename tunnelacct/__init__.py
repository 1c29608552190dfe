"""tunnelacct: exact TCP/UDP session accounting beside a WireGuard-style tunnel gateway."""

__version__ = "0.1.0"
