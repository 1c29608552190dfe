"""Whether the store answers, for readiness: a `SELECT 1` with a time limit, its last answer
kept (issue 22).

GET /readyz probes at once. `serve` probes at start and then every PROBE_EVERY_S as well, so
that its `tunnelacct_ready` metric judges by an answer at most that old: a scrape reads the
kept answer and never the store (house rule 13), however often Prometheus scrapes.
`readiness_reasons` is the one judgement of both.

    probe = StoreProbe()
    await probe.probe(engine)                       # None, or "store unreachable: ..."
    readiness_reasons(["capture on wg0 is waiting"], probe)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

PROBE_EVERY_S = 10.0  # serve's probes between those of GET /readyz
PROBE_TIMEOUT_S = 5.0  # a frozen server never answers: it is unreachable after this long
NOT_PROBED = "store not probed yet"


class StoreProbe:
    """The store's answer to the latest probe: `problem` is None when it answered."""

    def __init__(self, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.problem: str | None = NOT_PROBED

    async def probe(self, engine: AsyncEngine) -> str | None:
        """Ask the store `SELECT 1` now, waiting at most `timeout_s`; keep and return why it
        did not answer (None when it did)."""
        problem: str | None = None
        try:
            async with asyncio.timeout(self.timeout_s), engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except TimeoutError:
            problem = f"store unreachable: no answer within {self.timeout_s:g} s"
        except Exception as e:  # noqa: BLE001 - any failure means "not ready", with its reason
            problem = f"store unreachable: {e}"
        if problem is not None and self.problem in (None, NOT_PROBED):
            log.warning("not ready: %s", problem)
        elif problem is None and self.problem not in (None, NOT_PROBED):
            log.info("ready: the store answers again")
        self.problem = problem
        return problem

    async def every_interval(self, engine: AsyncEngine, interval_s: float = PROBE_EVERY_S) -> None:
        """Probe every `interval_s` seconds, forever (serve's task; it probed at start)."""
        while True:
            await asyncio.sleep(interval_s)
            await self.probe(engine)


def readiness_reasons(not_ready: Iterable[str], store: StoreProbe) -> list[str]:
    """Why the service is not ready, [] when it is: its own reasons (`not_ready`: its state,
    captures not capturing), then the store's latest answer. GET /readyz answers 503 with these
    reasons, and `tunnelacct_ready` is 0, exactly when the list is not empty."""
    reasons = list(not_ready)
    if store.problem is not None:
        reasons.append(store.problem)
    return reasons
