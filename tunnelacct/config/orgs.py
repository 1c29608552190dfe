"""The orgs a config knows: the declared ones and the default org, which need not be declared."""

from __future__ import annotations

from tunnelacct.config.model import Config, OrgConfig


def configured_orgs(config: Config) -> tuple[OrgConfig, ...]:
    """The declared orgs plus the default org (named after its id) when it is not declared."""
    if any(o.id == config.default_org for o in config.orgs):
        return config.orgs
    return (*config.orgs, OrgConfig(id=config.default_org, name=config.default_org))


def configured_org_ids(config: Config) -> frozenset[str]:
    """The ids of `configured_orgs(config)`."""
    return frozenset(o.id for o in configured_orgs(config))


def unlogged_orgs(config: Config) -> frozenset[str]:
    """The orgs whose sessions are not stored (`logging = false`)."""
    return frozenset(o.id for o in configured_orgs(config) if not o.logging)
