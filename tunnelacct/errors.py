"""Typed errors shared across modules; each edge (CLI, API) renders them once."""

from __future__ import annotations


class TunnelacctError(Exception):
    """Base class of every error tunnelacct reports to a person."""


class ConfigError(TunnelacctError):
    """A configuration value is missing or invalid: names file, line, key, value and why."""

    def __init__(
        self,
        key: str,
        why: str,
        *,
        value: object = None,
        path: str | None = None,
        line: int | None = None,
    ) -> None:
        self.key, self.why, self.value, self.path, self.line = key, why, value, path, line
        where = path or "config"
        if line is not None:
            where += f" line {line}"
        shown = f" = {value!r}" if value is not None else ""
        super().__init__(f"config error: {where}: {key}{shown}: {why}")


class CaptureFormatError(TunnelacctError):
    """A capture file is not a pcap/pcapng file or is broken beyond its last good record."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        self.why = why
        super().__init__(f"{path}: {why}")


class CaptureError(TunnelacctError):
    """A live capture cannot start or continue: names the interface and why.

    `transient` is True when retrying may help (the interface is missing or went down).
    """

    def __init__(self, interface: str, why: str, *, transient: bool = False) -> None:
        self.interface, self.why, self.transient = interface, why, transient
        super().__init__(f"capture on {interface}: {why}")


class StoreError(TunnelacctError):
    """The store cannot be reached, migrated or written."""


class UnknownOrgError(TunnelacctError):
    """An org id that neither the config nor the store knows (a typo, usually)."""

    def __init__(self, org_id: str, known: list[str]) -> None:
        self.org_id = org_id
        self.known = known
        super().__init__(f"unknown org {org_id!r}; known orgs: {', '.join(known) or 'none'}")


class FilterError(TunnelacctError):
    """A session filter term cannot be parsed: names the term as written and what was expected."""

    def __init__(self, token: str, expected: str) -> None:
        self.token = token
        self.expected = expected
        super().__init__(f"bad filter term {token!r}: expected {expected}")
