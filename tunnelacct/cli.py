"""Command line: parse flags, load config, call one library function, render errors once."""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from tunnelacct import __version__
from tunnelacct.config.load import load_config
from tunnelacct.config.model import Config
from tunnelacct.errors import TunnelacctError
from tunnelacct.log import setup_logging

CONFIG_HELP = "TOML config file (env TUNNELACCT_CONFIG). Without one, defaults apply."
# a command's own --config; the one before the command (`tunnelacct --config X db upgrade`)
# and $TUNNELACCT_CONFIG are the group's, which `_config()` falls back to
config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help=CONFIG_HELP,
)
# where `_config()` notes the configured store, so that any store error names it
_DATABASE_KEY = "tunnelacct.database_url"


def _config(path: Path | None) -> Config:
    """The config of the command's --config, else the group's --config or $TUNNELACCT_CONFIG."""
    context = click.get_current_context()
    if path is None:
        path = context.find_root().params.get("config_path")
    config = load_config(path, os.environ)
    context.meta[_DATABASE_KEY] = config.database.url
    return config


def _fmt_counts(c: Counter[str] | dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])) or "none"


class _Commands(click.Group):
    """The top group: a store error of any command names the configured database."""

    def invoke(self, ctx: click.Context) -> Any:
        from tunnelacct.config.database_url import shown_database
        from tunnelacct.errors import StoreError

        try:
            return super().invoke(ctx)
        except Exception as exc:
            # imported only now: a command that never touches the store itself (import: its
            # writer child does) must not pay for SQLAlchemy's import (0.36 s)
            from sqlalchemy.exc import SQLAlchemyError

            from tunnelacct.store.engine import store_why

            if not isinstance(exc, StoreError | SQLAlchemyError):
                raise
            url = ctx.meta.get(_DATABASE_KEY)
            why = str(exc) if isinstance(exc, StoreError) else store_why(exc)
            if url is None or shown_database(url) in why:
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(why) from exc
            raise StoreError(f"database {shown_database(url)}: {why}") from exc


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="tunnelacct")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TUNNELACCT_CONFIG",
    help=CONFIG_HELP,
)
@click.option(
    "--log-level",
    help="DEBUG, INFO, WARNING, ... (default: INFO for serve, WARNING for the other commands, "
    "which print their results themselves).",
)
@click.pass_context
def cli(context: click.Context, config_path: Path | None, log_level: str | None) -> None:
    """tunnelacct: exact TCP/UDP session accounting for tunnel gateways."""
    if log_level is None:
        log_level = "INFO" if context.invoked_subcommand == "serve" else "WARNING"
    setup_logging(log_level)


@cli.command("import")
@config_option
@click.option(
    "--metrics-textfile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the import's figures as Prometheus text (node_exporter textfile collector).",
)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def import_cmd(config_path: Path | None, metrics_textfile: Path | None, files: tuple[Path]) -> None:
    """Import pcap/pcapng FILES (one continuous capture, ordered by first packet time)."""
    from tunnelacct.ingest.importer import import_captures

    config = _config(config_path)
    total = sum(f.stat().st_size for f in files if f.is_file())
    if sys.stderr.isatty():
        with click.progressbar(
            length=total, label="importing", file=sys.stderr, show_eta=True
        ) as bar:
            summary = import_captures(config, files, progress=bar.update)
    else:
        summary = import_captures(config, files)
    s = summary
    echo = click.echo
    echo(
        f"imported {s.files} file(s): {s.packets:,} packets in {s.seconds:.2f} s "
        f"({s.packets_per_s:,.0f} packets/s)"
    )
    echo(f"  accounted: {s.accounted_packets:,} TCP/UDP packets, {s.accounted_bytes:,} IP bytes")
    echo(
        f"  sessions: {s.sessions:,} (unattributed: {s.unattributed_sessions:,}); "
        f"closed by: {_fmt_counts(s.closed)}"
    )
    echo(f"  decode errors: {_fmt_counts(s.decode_errors)}")
    echo(f"  skipped (not TCP/UDP): {_fmt_counts(s.skipped)}")
    if s.late_packets:
        echo(
            f"  late: {s.late_packets:,} packets more than 1 s older than a packet before them "
            "(merged or reordered captures, or a clock step back)"
        )
    echo(
        f"  rows written: {s.rows_written:,} to {config.database.url}; replaced {s.replaced:,} "
        "stored by an earlier capture of the same traffic"
    )
    for w in s.warnings:
        echo(f"warning: {w}", err=True)
    if metrics_textfile is not None:
        from tunnelacct.metrics.textfile import write_import_metrics

        write_import_metrics(summary, metrics_textfile)
    if s.failed_files:
        for f in s.failed_files:
            echo(f"error: {f}", err=True)
        sys.exit(1)


@cli.command("export")
@config_option
@click.option("--org", required=True, help="Organisation id whose sessions to export.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV file to write (default: standard output).",
)
@click.option("-q", "--q", "q", help='Only sessions matching this filter, e.g. "protocol:udp".')
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=2,
    show_default=True,
    help="Processes that read and quote rows in parallel (0: this process only).",
)
def export_cmd(
    config_path: Path | None, org: str, output: Path | None, q: str | None, workers: int
) -> None:
    """Export an organisation's sessions as CSV (RFC 4180, times in RFC 3339 UTC)."""
    from tunnelacct.query.export import export_org
    from tunnelacct.query.filters import parse_filter
    from tunnelacct.query.outfile import replacing_bytes
    from tunnelacct.store.engine import require_database

    flt = parse_filter(q) if q else None  # a bad filter fails before any file is created
    config = _config(config_path)
    require_database(config.database.url)
    # rows so far on a terminal, unless the CSV itself is going to that terminal
    show = sys.stderr.isatty() and (output is not None or not sys.stdout.isatty())

    def progress(rows: int) -> None:
        click.echo(f"\rexporting: {rows:,} rows", nl=False, err=True)

    report = progress if show else None
    if output is None:
        sys.stdout.flush()  # the CSV goes to its binary buffer as bytes
        out = sys.stdout.buffer
        rows = export_org(config, org, out, flt=flt, progress=report, workers=workers)
    else:
        # the previous file stays whole until the new one is: an export that fails (an
        # unknown org, a store that is not migrated or not reachable) leaves it as it was
        with replacing_bytes(output) as f:
            rows = export_org(config, org, f, flt=flt, progress=report, workers=workers)
    if show:
        click.echo("", err=True)
    click.echo(f"exported {rows:,} sessions of org {org!r}", err=True)
    _exit_now()


def _exit_now() -> None:
    """End the process with success at once, its output flushed: what a command wrote is
    synced and closed, its engine disposed and its worker processes ended, so the
    interpreter's teardown (freeing every module, 0.09 s after an export's imports) is only
    time the user waits for (issue 21)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@cli.group("usage", invoke_without_command=True)
@config_option
@click.option("--org", help="Organisation id whose usage to report (required).")
@click.option(
    "--by",
    default="",
    help="Group by these, comma-separated: client, user, resource, protocol, gateway.",
)
@click.option(
    "--interval",
    type=click.Choice(["day", "week", "month"]),
    default="day",
    show_default=True,
    help="One row per group and UTC day, ISO week (from Monday) or month.",
)
@click.option("--month", help="The days of this month, YYYY-MM.")
@click.option("--from", "first", help="First day, YYYY-MM-DD (default: the 1st of --to's month).")
@click.option("--to", "last", help="Last day, YYYY-MM-DD, inclusive (default: today, UTC).")
@click.option("-q", "--q", "q", default="", help='Only these groups, e.g. "user:alice".')
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV file to write (default: a table on a terminal, CSV when piped).",
)
@click.pass_context
def usage_cmd(
    context: click.Context,
    config_path: Path | None,
    org: str | None,
    by: str,
    interval: str,
    month: str | None,
    first: str | None,
    last: str | None,
    q: str,
    output: Path | None,
) -> None:
    """Report an organisation's usage: bytes, packets and sessions per group and interval,
    from the usage rollup (kept for usage_retention_days, after sessions are purged).

    `tunnelacct usage rebuild` computes the rollup again from the sessions still stored."""
    if context.invoked_subcommand is not None:
        return
    if org is None:
        raise click.UsageError("Missing option '--org'.")
    from tunnelacct.errors import UnknownOrgError
    from tunnelacct.query.outfile import replacing
    from tunnelacct.reports.render import text_table, write_csv
    from tunnelacct.reports.usage import UsageRow, read_usage, usage_query
    from tunnelacct.store.inventory import stored_org_ids, sync_inventory

    # a bad parameter fails before any file is created
    query = usage_query(org, by=by, interval=interval, month=month, first=first, last=last, q=q)
    config = _config(config_path)

    async def work(engine: Any) -> list[UsageRow]:
        await sync_inventory(engine, config)
        known = await stored_org_ids(engine)
        if org not in known:
            raise UnknownOrgError(org, sorted(known))
        return await read_usage(engine, query)

    rows: list[UsageRow] = _with_engine(config, work)
    if output is not None:
        with replacing(output) as f:
            write_csv(query, rows, f)
        click.echo(f"wrote {len(rows):,} rows of org {org!r} usage to {output}", err=True)
    elif sys.stdout.isatty():
        click.echo(text_table(query, rows), nl=False)
    else:
        write_csv(query, rows, sys.stdout)


@usage_cmd.command("rebuild")
@config_option
@click.option("--org", help="Rebuild only this org (default: every org in the store).")
@click.option("--from", "first", help="First day, YYYY-MM-DD (default: the org's first session).")
@click.option("--to", "last", help="Last day, YYYY-MM-DD, inclusive (default: today, UTC).")
def usage_rebuild(
    config_path: Path | None, org: str | None, first: str | None, last: str | None
) -> None:
    """Compute the usage rollup again from the sessions still stored. Days whose sessions a
    purge deleted cannot come back: they are left as they are, and said so."""
    from tunnelacct.errors import UnknownOrgError
    from tunnelacct.reports.usage import usage_days_range
    from tunnelacct.store.inventory import stored_org_ids, sync_inventory
    from tunnelacct.store.usagerebuild import Rebuilt, rebuild_usage

    config = _config(config_path)

    async def work(engine: Any) -> list[Rebuilt]:
        await sync_inventory(engine, config)
        known = await stored_org_ids(engine)
        if org is not None and org not in known:
            raise UnknownOrgError(org, sorted(known))
        done = []
        for org_id in [org] if org is not None else sorted(known):
            days = await usage_days_range(engine, org_id, first, last)
            if days is not None:
                done.append(await rebuild_usage(engine, org_id, *days))
        return done

    rebuilt: list[Rebuilt] = _with_engine(config, work)
    for r in rebuilt:
        if r.purged_before is not None:
            click.echo(
                f"org {r.org_id}: days before {r.purged_before} lost sessions to a purge: "
                "their usage cannot be rebuilt and stays as it was"
            )
        if r.first_day is None:
            continue
        rate = r.sessions / r.seconds if r.seconds else 0.0
        click.echo(
            f"org {r.org_id}: rebuilt {r.first_day} to {r.last_day} from {r.sessions:,} "
            f"sessions: {r.rows:,} usage rows ({r.seconds:.1f} s, {rate:,.0f} sessions/s)"
        )


@cli.command("serve")
@config_option
@click.option(
    "--status-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the service's status (captures, drops, writer) here as JSON, every second.",
)
def serve_cmd(config_path: Path | None, status_file: Path | None) -> None:
    """Capture every [[capture]] and record sessions live until SIGTERM/SIGINT."""
    from tunnelacct.service.service import serve
    from tunnelacct.store.schema import upgrade_to_head

    config = _config(config_path)
    upgrade_to_head(config.database.url)
    serve(config, status_path=status_file)


@cli.command("purge")
@config_option
@click.option("--org", help="Purge only this org (default: every org with a retention).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
def purge_cmd(config_path: Path | None, org: str | None, dry_run: bool) -> None:
    """Delete completed sessions older than each org's retention_days (for cron/timers).

    Safe while the service writes and when run from several machines at once: one purge
    works, another reports that and exits 0.
    """
    from tunnelacct.config.orgs import configured_orgs
    from tunnelacct.errors import UnknownOrgError
    from tunnelacct.query.records import format_time
    from tunnelacct.retention.purge import PurgeResult, purge
    from tunnelacct.store.inventory import stored_org_ids, sync_inventory

    config = _config(config_path)

    async def work(engine: Any) -> PurgeResult:
        await sync_inventory(engine, config)  # retention as the config says it now
        if org is not None and org not in await stored_org_ids(engine):
            raise UnknownOrgError(org, sorted(await stored_org_ids(engine)))
        return await purge(engine, org_id=org, dry_run=dry_run)

    result: PurgeResult = _with_engine(config, work)
    if result.locked_by is not None:
        click.echo(f"another purge is running ({result.locked_by}); nothing done")
        return
    verb = "would delete" if dry_run else "deleted"
    purged = {p.org_id for p in result.orgs}
    for p in result.orgs:
        cutoff = format_time(p.cutoff)
        line = f"org {p.org_id}: {verb} {p.deleted:,} sessions that ended before {cutoff}"
        if p.access_deleted:
            line += f" and {p.access_deleted:,} access log rows of reads before it"
        if p.usage_cutoff_day is not None:
            line += f", and {p.usage_deleted:,} usage rows of days before {p.usage_cutoff_day}"
        click.echo(line)
    for o in configured_orgs(config):
        if o.id not in purged and (org is None or o.id == org) and o.retention_days is None:
            click.echo(f"org {o.id}: kept forever")
    click.echo(f"{verb} {result.deleted:,} sessions in all" + (" (dry run)" if dry_run else ""))


role_option = click.option(
    "--role",
    type=click.Choice(["auditor", "admin"]),
    default="auditor",
    show_default=True,
    help="auditor: one org's data; admin: every org.",
)


@cli.group("token")
def token_group() -> None:
    """API bearer tokens: create (shown once), list, revoke."""


def _with_engine(config: Config, work: Any) -> Any:
    """Migrate the existing store (StoreError naming it when there is none: these commands
    read or purge and never create one), then run `await work(engine)`; return its result."""
    import asyncio

    from tunnelacct.store.engine import make_engine, require_database
    from tunnelacct.store.schema import upgrade_to_head

    require_database(config.database.url)
    upgrade_to_head(config.database.url)

    async def run() -> Any:
        engine = make_engine(config.database.url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@token_group.command("create")
@config_option
@role_option
@click.option("--org", help="The org an auditor token may read.")
@click.option("--name", help="A note saying whose token this is.")
@click.option(
    "--expires",
    "lifetime",
    default="never",
    show_default=True,
    help="Refuse the token after this long: days or hours, like 90d or 12h, or never.",
)
def token_create(
    config_path: Path | None, role: str, org: str | None, name: str | None, lifetime: str
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from datetime import UTC, datetime

    from tunnelacct.config.orgs import configured_org_ids
    from tunnelacct.errors import UnknownOrgError
    from tunnelacct.store.inventory import stored_org_ids
    from tunnelacct.web.auth import Role, create_token, token_expiry

    expires_at = token_expiry(lifetime, datetime.now(UTC))  # a bad --expires fails first
    config = _config(config_path)

    async def work(engine: Any) -> str:
        if org is not None:
            known = configured_org_ids(config) | await stored_org_ids(engine)
            if org not in known:
                raise UnknownOrgError(org, sorted(known))
        text, _row = await create_token(
            engine, Role(role), org_id=org, name=name, expires_at=expires_at
        )
        return text

    click.echo(_with_engine(config, work))
    click.echo("store it now: it is not shown again", err=True)
    if expires_at is not None:
        click.echo(f"it stops working at {expires_at.isoformat()}", err=True)


@token_group.command("list")
@config_option
def token_list(config_path: Path | None) -> None:
    """Every token: id, role, org, name, created, revoked (or expired, or active), expires,
    last used (never the secret)."""
    from datetime import UTC, datetime

    from tunnelacct.web.auth import list_tokens, token_state

    now = datetime.now(UTC)
    for t in _with_engine(_config(config_path), list_tokens):
        # revoked: when; else expired or active
        state = t.revoked_at.isoformat() if t.revoked_at else token_state(t, now).value
        fields = [
            t.id,
            t.role,
            t.org_id or "*",
            t.name or "",
            t.created_at.isoformat(),
            state,
            t.expires_at.isoformat() if t.expires_at else "never",
            t.last_used_at.isoformat() if t.last_used_at else "never",
        ]
        click.echo("\t".join(_one_line(field) for field in fields))


# Control characters (C0, DEL, C1) and the backslash, as escapes: a name holding a tab or a
# line break must not forge a column or a row of `token list` (issue 16, item 9).
_ESCAPES = {ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}
_ESCAPES.update(
    {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)] if code not in _ESCAPES}
)


def _one_line(text: str) -> str:
    """`text` as one tab-free line: control characters and backslashes escaped."""
    return text.translate(_ESCAPES)


@token_group.command("revoke")
@config_option
@click.argument("token_id")
def token_revoke(config_path: Path | None, token_id: str) -> None:
    """Revoke a token by its id (from `token list`); it stops working at once."""
    from tunnelacct.web.auth import revoke_token

    _with_engine(_config(config_path), lambda engine: revoke_token(engine, token_id))
    click.echo(f"revoked {token_id}", err=True)


@cli.group("user")
def user_group() -> None:
    """Users of the web UI: create (the password is kept only as a scrypt hash)."""


@user_group.command("create")
@config_option
@click.argument("name")
@role_option
@click.option("--org", help="The org an auditor may read.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input. Without it: asked for on "
    "a terminal, else generated and printed once.",
)
def user_create(
    config_path: Path | None, name: str, role: str, org: str | None, password_stdin: bool
) -> None:
    """Create a user of the web UI."""
    from tunnelacct.config.orgs import configured_org_ids
    from tunnelacct.errors import UnknownOrgError
    from tunnelacct.store.inventory import stored_org_ids
    from tunnelacct.web.auth import Role
    from tunnelacct.web.users import create_user, generated_password

    config = _config(config_path)
    generated = False
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = generated_password()
        generated = True

    async def work(engine: Any) -> None:
        if org is not None:
            known = configured_org_ids(config) | await stored_org_ids(engine)
            if org not in known:
                raise UnknownOrgError(org, sorted(known))
        await create_user(engine, name, Role(role), org_id=org, password=password)

    _with_engine(config, work)
    click.echo(f"created {role} {name!r}" + (f" of org {org!r}" if org else ""), err=True)
    if generated:
        click.echo(password)
        click.echo("the generated password: store it now, it is not shown again", err=True)


@cli.group("db")
def db_group() -> None:
    """Database maintenance."""


@db_group.command("upgrade")
@config_option
def db_upgrade(config_path: Path | None) -> None:
    """Create or migrate the schema to the latest revision."""
    from tunnelacct.config.database_url import shown_database
    from tunnelacct.store.migrate import migrate

    config = _config(config_path)
    migrate(config.database.url)
    click.echo(f"database at {shown_database(config.database.url)} is up to date")


@db_group.command("partition")
@config_option
def db_partition(config_path: Path | None) -> None:
    """SQLite: move sessions that no partition holds (stored before the partitioned layout,
    or on a day serve had made no partition for) into partitions.

    A purge empties or drops whole expired partitions (fast) but deletes the rows of
    sessions_default one by one. Orgs kept forever stay in sessions_default. One org and day
    per transaction: safe while serve writes.
    """
    from sqlalchemy import create_engine, pool

    from tunnelacct.store.engine import backend_of, sync_url
    from tunnelacct.store.inventory import sync_inventory

    config = _config(config_path)

    async def work(engine: Any) -> None:
        await sync_inventory(engine, config)  # the orgs' retention, which sizes partitions

    _with_engine(config, work)
    backend = backend_of(config.database.url)
    engine = create_engine(sync_url(config.database.url), poolclass=pool.NullPool)
    try:
        moved = backend.place_unpartitioned_rows(engine)
    finally:
        engine.dispose()
    if moved is None:
        click.echo(f"nothing to do: {backend.label} stores sessions in day partitions already")
        return
    click.echo(f"moved {moved:,} sessions into partitions")


@cli.group("config")
def config_group() -> None:
    """Configuration helpers."""


@config_group.command("check")
@config_option
def config_check(config_path: Path | None) -> None:
    """Validate the config file and print what it declares."""
    from tunnelacct.config.database_url import shown_database

    c = _config(config_path)
    if c.path is None:
        raise click.UsageError(
            "no config file given: pass --config FILE or set TUNNELACCT_CONFIG "
            "(without one, every command runs on the defaults)"
        )
    click.echo(
        f"{c.path}: ok: {len(c.orgs)} orgs, {len(c.clients)} clients, "
        f"{len(c.resources)} resources, {len(c.captures)} captures; "
        f"database {shown_database(c.database.url)}; gateway {c.gateway}"
    )


@cli.command("inspect")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--limit", default=20, show_default=True, help="How many packets to show.")
@click.option("--all-reasons", is_flag=True, help="Also show valid non-TCP/UDP packets.")
def inspect_cmd(file: Path, limit: int, all_reasons: bool) -> None:
    """Show the packets of FILE that were not decoded, why, and what scapy makes of them."""
    from tunnelacct.capture.inspect import failed_packets

    n = 0
    for number, ts, reason, text in failed_packets(file, limit=limit, include_skipped=all_reasons):
        click.echo(f"#{number} t={ts:.6f} {reason}: {text}")
        n += 1
    if not n:
        click.echo("every packet decoded")


def main(argv: list[str] | None = None) -> Any:
    """Entry point: runs the CLI; a TunnelacctError prints `error: ...` and exits 2."""
    try:
        return cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except TunnelacctError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
