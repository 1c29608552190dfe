"""serve's retention: a purge every [retention] interval with the retention the config file
says then, and the figures of every purge of the store, whoever ran it, read from purge_runs
for the metrics."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config.load import load_config
from tunnelacct.config.model import Config
from tunnelacct.config.orgs import configured_orgs
from tunnelacct.errors import ConfigError, StoreError
from tunnelacct.metrics.collectors import RetentionFigures
from tunnelacct.retention.purge import PURGE_RUNS_POLL_S, PurgeRunTally, purge
from tunnelacct.store.inventory import sync_orgs
from tunnelacct.store.purgework import WriteLock

log = logging.getLogger(__name__)


class ScheduledPurges:
    """The purges of one serve. `write_lock` is its writer's: flushes and purge batches take
    turns."""

    def __init__(
        self,
        config: Config,
        write_lock: WriteLock,
        *,
        purge_runs_poll_s: float = PURGE_RUNS_POLL_S,
    ) -> None:
        self._config = config
        self._write_lock = write_lock
        self._poll_s = purge_runs_poll_s
        self._problem: str | None = None  # why purge_runs cannot be read, until it can
        # what every purge of the store did, from purge_runs (0 for every org known at start)
        self.purged = PurgeRunTally(o.id for o in configured_orgs(config))

    async def every_interval(self, engine: AsyncEngine) -> None:
        """Purge every [retention] interval, as `tunnelacct purge` does; failures are logged."""
        while True:
            await asyncio.sleep(self._config.retention.interval_s)
            await self.purge_once(engine)
            await self.read_purge_runs(engine)  # its figures now, not at the next poll

    async def poll_purge_runs(self, engine: AsyncEngine) -> None:
        """Read purge_runs every `purge_runs_poll_s`: the metrics show every process's purges
        (cron, timers, other hosts), and collect() never reads the store (issue 15, item 9)."""
        while True:
            await self.read_purge_runs(engine)
            await asyncio.sleep(self._poll_s)

    async def read_purge_runs(self, engine: AsyncEngine) -> None:
        try:
            await self.purged.refresh(engine)
        except StoreError as e:
            if self._problem is None:  # once until it works again, not every poll
                log.warning("retention metrics: %s; showing the figures read before", e)
            self._problem = str(e)
            return
        if self._problem is not None:
            log.info("retention metrics: purge_runs readable again")
            self._problem = None

    async def purge_once(self, engine: AsyncEngine) -> None:
        """One purge with the retention the config file says now (re-read: no restart needed).

        Nothing it meets stops the service: a config that cannot be read, whatever the reason,
        leaves the retention last stored; a failed purge is logged and tried next interval.
        """
        config: Config | None = self._config
        if self._config.path is not None:
            try:
                config = await asyncio.to_thread(load_config, self._config.path)
            except ConfigError as e:
                log.error("purge: %s; purging with the retention last stored", e)
                config = None
            except Exception:  # a bug in reading a config must not end serve (issue 16)
                log.exception(
                    "purge: cannot read %s; purging with the retention last stored",
                    self._config.path,
                )
                config = None
        try:
            if config is not None:
                await sync_orgs(engine, config)
            await purge(engine, write_lock=self._write_lock)
        except StoreError as e:
            log.error("purge failed: %s", e)
        except Exception:
            interval_s = self._config.retention.interval_s
            log.exception("purge failed; trying again in %s s", interval_s)

    def figures(self) -> RetentionFigures:
        """What purge_runs said at the last read, for the metrics (no store read)."""
        purged = self.purged
        last = {org: at.timestamp() for org, at in purged.last_success_by_org.items()}
        return RetentionFigures(dict(purged.deleted_by_org), dict(purged.failures_by_org), last)
