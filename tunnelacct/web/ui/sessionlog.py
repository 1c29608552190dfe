"""The session log: an org's sessions newest first, filtered with the API's language, paged by
keyset, one session's every field, and the CSV of exactly what the log shows.

    GET /orgs/{org}/sessions?q=&from=&to=&older=|newer=   the log (partial=1: its results only)
    GET /orgs/{org}/sessions/{id}                         one session, every field
    GET /orgs/{org}/sessions.csv?q=&from=&to=             every matching session, streamed

The page has no query code of its own: the filter is `q` plus the range's `started_after:` and
`started_before:` terms (web/ui/ranges.py), parsed by the API's parser, read with the API's
keyset pages and capped count, exported by the API's CSV generator, scoped by its org check.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tunnelacct.errors import FilterError
from tunnelacct.query.filters import Filter, parse_filter
from tunnelacct.query.pages import Key, capped_count, page, page_before
from tunnelacct.query.records import CSV_COLUMNS, record_fields
from tunnelacct.store.models import Org, PurgeRun, SessionRecord, table_of
from tunnelacct.web.accesslog import AccessTarget
from tunnelacct.web.context import ApiContext
from tunnelacct.web.cursors import decode_cursor, encode_cursor
from tunnelacct.web.errors import BadParameter
from tunnelacct.web.routes.sessions import COUNT_CAP
from tunnelacct.web.streaming import ExportProgress, export_stream
from tunnelacct.web.ui.ranges import RangeError, TimeRange, time_range, with_range
from tunnelacct.web.ui.render import Pages
from tunnelacct.web.ui.viewers import SignedIn, ViewerOrg, log_access

PAGE_ROWS = 50  # rows of a page unless `rows` says otherwise
MAX_PAGE_ROWS = 500
LIVE_TERM = "status:ongoing"  # with it in the filter, the page refreshes itself


@dataclass(frozen=True, slots=True)
class Chip:
    """A one-click filter: terms it adds to q (or removes when present), or a range it sets."""

    label: str
    terms: tuple[str, ...] = ()
    since: str = ""  # a `from` such as now-1h; "" for a chip of terms


CHIPS = (
    Chip("Ongoing now", terms=(LIVE_TERM,)),
    Chip("Last 1 h", since="now-1h"),
    Chip("Last 24 h", since="now-24h"),
    Chip("Last 7 d", since="now-7d"),
    Chip("TCP 22", terms=("protocol:tcp", "dport:22")),
    Chip("> 10 MB", terms=("bytes>10M",)),
)


def quoted(value: str) -> str:
    """A filter value as written in a term: double-quoted when it holds a space."""
    return f'"{value}"' if any(c.isspace() for c in value) else value


def with_terms(filter_text: str, terms: tuple[str, ...]) -> str:
    """`filter_text` with `terms` added, each once."""
    words = filter_text.split()
    return " ".join([*words, *(term for term in terms if term not in words)])


def without_terms(filter_text: str, terms: tuple[str, ...]) -> str:
    """`filter_text` less `terms`."""
    return " ".join(word for word in filter_text.split() if word not in terms)


@dataclass
class LogQuery:
    """What one request of the log asks for, as the page's links and form keep it."""

    q: str = ""
    first: str = ""  # `from` as written: a relative one stays relative on refresh
    last: str = ""  # `to` as written
    older: str = ""
    newer: str = ""
    rows: str = ""  # rows of a page as written ("" for PAGE_ROWS)

    def args(self, **changed: str) -> dict[str, str]:
        """The query string of this view with `changed` fields (paging restarts unless given)."""
        current = {"q": self.q, "from": self.first, "to": self.last, "rows": self.rows}
        return {**current, **changed}

    def page_rows(self) -> int:
        """Rows of a page; BadParameter("rows") unless 1..MAX_PAGE_ROWS."""
        if not self.rows:
            return PAGE_ROWS
        if not self.rows.isdigit() or not 1 <= int(self.rows) <= MAX_PAGE_ROWS:
            why = f"rows {self.rows!r}: expected a number of rows 1-{MAX_PAGE_ROWS}"
            raise BadParameter("rows", why)
        return int(self.rows)

    def chip_args(self, chip: Chip) -> dict[str, str]:
        """The view a chip leads to: its terms toggled, or its range set."""
        if chip.since:
            return self.args(**{"from": chip.since, "to": ""})
        if self.chip_on(chip):
            return self.args(q=without_terms(self.q, chip.terms))
        return self.args(q=with_terms(self.q, chip.terms))

    def chip_on(self, chip: Chip) -> bool:
        """Whether the view has the chip's terms (or range)."""
        if chip.since:
            return self.first == chip.since and not self.last
        words = self.q.split()
        return all(term in words for term in chip.terms)

    def adding(self, key: str, value: object) -> dict[str, str]:
        """The view with the term `key:value` added (a value clicked in a row)."""
        return self.args(q=with_terms(self.q, (f"{key}:{quoted(str(value))}",)))


@dataclass
class LogPage:
    """One page of the log as the template shows it."""

    rows: list[SessionRecord] = field(default_factory=list)
    count: int = 0
    count_capped: bool = False
    older_cursor: str = ""
    newer_cursor: str = ""
    problem: str = ""  # why nothing is shown: "invalid", "no_match", "logging_off", "purged"
    error_parameter: str = ""  # q, from or to
    error_text: str = ""
    purged_before: datetime | None = None


def _cursor_of(row: SessionRecord) -> str:
    return encode_cursor(row.started_at, row.id)


def _decoded(cursor: str) -> Key | None:
    return decode_cursor(cursor) if cursor else None


def session_log_routes(ctx: ApiContext, pages: Pages) -> APIRouter:
    """The log, a session's detail and the export (see the module docstring)."""
    router = APIRouter()

    def parsed(view: LogQuery) -> tuple[Filter | None, TimeRange]:
        window = time_range(view.first, view.last, ctx.clock())
        text = with_range(view.q, window)
        return (parse_filter(text) if text.strip() else None), window

    async def read_page(
        request: Request, viewer_id: str, org: str, flt: Filter | None, view: LogQuery
    ) -> LogPage:
        newer = _decoded(view.newer)
        older = _decoded(view.older) if newer is None else None
        size = view.page_rows()
        if newer is not None:
            stmt = page(org, flt, newer, size)  # oldest first from the cursor: reversed
        else:
            stmt = page_before(org, flt, older, size)
        counted = capped_count(org, flt, COUNT_CAP)

        async def read(db: AsyncSession) -> tuple[list[SessionRecord], int]:
            rows = list((await db.scalars(stmt)).all())
            first_page = newer is None and older is None
            if first_page and len(rows) <= size:
                return rows, len(rows)
            return rows, int((await db.execute(counted)).scalar_one())

        async with ctx.limits.slot(viewer_id):
            rows, count = await ctx.limits.run(ctx.engine, request.receive, read)
        more = len(rows) > size
        shown = rows[:size]
        if newer is not None:
            shown.reverse()
        result = LogPage(rows=shown, count=min(count, COUNT_CAP), count_capped=count > COUNT_CAP)
        if shown:
            has_older = more if newer is None else True
            has_newer = (older is not None) if newer is None else more
            result.older_cursor = _cursor_of(shown[-1]) if has_older else ""
            result.newer_cursor = _cursor_of(shown[0]) if has_newer else ""
        return result

    async def why_empty(org: str, window: TimeRange, result: LogPage) -> None:
        """Set the page's empty state: logging off, sessions the range reaches purged by
        retention (a purge deleted some before its cutoff), or no match."""
        runs = table_of(PurgeRun)
        last_deleting = (
            select(runs.c.cutoff)
            .where(runs.c.org_id == org, runs.c.dry_run.is_(False), runs.c.deleted > 0)
            .order_by(runs.c.cutoff.desc())
            .limit(1)
        )
        async with AsyncSession(ctx.engine) as db:
            row = await db.get(Org, org)
            cutoff = (await db.execute(last_deleting)).scalar_one_or_none()
        if row is not None and not row.logging:
            result.problem = "logging_off"
        elif cutoff is not None and (window.start is None or window.start < cutoff):
            result.problem = "purged"
            result.purged_before = cutoff
        else:
            result.problem = "no_match"

    @router.get("/orgs/{org}/sessions")
    async def session_log(request: Request, viewer: SignedIn, org: ViewerOrg) -> Response:
        params = request.query_params
        view = LogQuery(
            q=params.get("q", ""),
            first=params.get("from", ""),
            last=params.get("to", ""),
            older=params.get("older", ""),
            newer=params.get("newer", ""),
            rows=params.get("rows", ""),
        )
        # a bad filter, range or page size is a state of the page (200, its error shown at the
        # field, role=alert), as a wrong password is: only an error of HTTP's is a 4xx here
        result = LogPage()
        try:
            flt, window = parsed(view)
            result = await read_page(request, viewer.principal.token_id, org, flt, view)
            if not params.get("partial"):  # a live refresh is the page's, logged at its load
                searched = with_range(view.q, window)
                rows = len(result.rows)
                what = AccessTarget.SESSIONS
                await log_access(request, viewer, org, what, searched, rows=rows)
            if not result.rows:
                await why_empty(org, window, result)
        except FilterError as e:
            result.problem = "invalid"
            result.error_parameter = "q"
            result.error_text = f"Bad filter term {e.token}: expected {e.expected}."
        except RangeError as e:
            result.problem = "invalid"
            result.error_parameter = e.parameter
            result.error_text = str(e)
        except BadParameter as e:  # rows, or a cursor edited by hand
            result.problem = "invalid"
            result.error_parameter = e.parameter
            result.error_text = e.detail
        live = LIVE_TERM in view.q.split() and not view.older and not view.newer
        template = "sessions_results.html" if params.get("partial") else "sessions.html"
        return pages.render(
            request,
            template,
            viewer=viewer,
            org=org,
            view=view,
            result=result,
            chips=CHIPS,
            live=live,
        )

    @router.get("/orgs/{org}/sessions/{session_id}")
    async def session_detail(
        request: Request, viewer: SignedIn, org: ViewerOrg, session_id: str
    ) -> Response:
        try:
            ident = uuid.UUID(session_id)
        except ValueError:
            raise HTTPException(404, f"no session {session_id!r}") from None
        table = table_of(SessionRecord)
        stmt = select(SessionRecord).where(table.c.org_id == org, table.c.id == ident)
        async with AsyncSession(ctx.engine) as db:
            record = (await db.scalars(stmt)).first()
        if record is None:
            raise HTTPException(404, f"no session {session_id!r} in org {org!r}")
        await log_access(request, viewer, org, AccessTarget.SESSION, f"id:{ident}", rows=1)
        fields: dict[str, Any] = record_fields(record)
        return pages.render(
            request,
            "session.html",
            viewer=viewer,
            org=org,
            record=record,
            fields=[(name, fields[name]) for name in CSV_COLUMNS],
            back=request.query_params.get("back", ""),
        )

    @router.get("/orgs/{org}/sessions.csv")
    async def session_csv(request: Request, viewer: SignedIn, org: ViewerOrg) -> Response:
        view = LogQuery(
            q=request.query_params.get("q", ""),
            first=request.query_params.get("from", ""),
            last=request.query_params.get("to", ""),
        )
        try:
            flt, window = parsed(view)
        except FilterError as e:
            raise BadParameter("q", f"bad filter term {e.token}: expected {e.expected}") from e
        except RangeError as e:
            raise BadParameter(e.parameter, str(e)) from e
        release = ctx.limits.reserve_export(viewer.principal.token_id)
        searched = with_range(view.q, window)

        async def ended(progress: ExportProgress) -> None:
            what = AccessTarget.SESSIONS_CSV
            status = progress.status
            await log_access(
                request, viewer, org, what, searched, rows=progress.rows, status=status
            )

        filename = f"tunnelacct-{org}-sessions.csv"
        return export_stream(ctx, org, flt, filename, release=release, ended=ended)

    return router
