"""Dump and restore every database of a pod's PostgreSQL with the PostgreSQL client tools.

Layout of a dump directory:

    databases.json   [{"name": "unityplan_dk", "file": "unityplan_dk.dump"}, ...]
    globals.sql      `pg_dumpall --globals-only`: roles, their passwords and memberships
    <db>.dump        `pg_dump -Fc` of one database

Why one custom-format dump per database rather than one `pg_dumpall` script: the archive
carries the database's own CREATE DATABASE (owner, encoding, and the C collation Synapse
insists on), is compressed, and `pg_restore` can bring back one database alone; a plain
script can only be replayed whole. Each dump is consistent in itself (pg_dump runs in one
snapshot); the pod's databases belong to independent services and need no common snapshot.

The client tools must be at least the server's major version (pg_dump refuses a newer
server). The password travels in PGPASSWORD, never in argv; `-w` makes a missing or wrong
password fail at once instead of prompting.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from unityplan_infra.backup.errors import BackupError, RestoreRefused

MANIFEST = "databases.json"
GLOBALS = "globals.sql"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
# CREATE ROLE / ALTER ROLE lines of pg_dumpall, with the role name as printed (maybe quoted).
_ROLE_STATEMENT = re.compile(r'^(?:CREATE|ALTER) ROLE ("(?:[^"]|"")+"|[^\s;"]+)[\s;]')


@dataclass(frozen=True)
class PgConnection:
    """How to reach the server as a superuser (pg_dumpall --globals-only needs one)."""

    host: str
    port: int = 5432
    user: str = "postgres"
    password: str = ""
    maintenance_db: str = "postgres"  # connected to for listing, dropping and creating
    bin_dir: str = ""  # directory of psql/pg_dump/...; "" = from PATH
    timeout: float = 3600.0  # per tool run

    def __repr__(self) -> str:  # keeps the password out of tracebacks and logs
        return f"PgConnection({self.user}@{self.host}:{self.port})"

    def tool(self, name: str) -> str:
        return str(Path(self.bin_dir) / name) if self.bin_dir else name

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user,
                   PGCONNECT_TIMEOUT="10", PGAPPNAME="unityplan-backup")  # fmt: skip
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


@dataclass(frozen=True)
class DumpedDatabase:
    name: str
    file: str  # file name inside the dump directory
    size: int


def run_tool(connection: PgConnection, name: str, *args: str) -> str:
    """Run a PostgreSQL client tool; stdout on success, a BackupError naming the fix else."""
    command = [connection.tool(name), "-w", *args]
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True,
            env=connection.environment(), timeout=connection.timeout, check=False,
        )  # fmt: skip
    except FileNotFoundError as error:
        raise BackupError(f"{name} not found: install the PostgreSQL client tools (at least "
                          "the server's major version) or set bin_dir") from error  # fmt: skip
    except subprocess.TimeoutExpired as error:
        raise BackupError(f"{name} on {connection!r} did not finish in "
                          f"{connection.timeout:.0f}s") from error  # fmt: skip
    stderr = result.stderr.decode(errors="replace")
    if result.returncode != 0:
        raise _classify(connection, name, stderr)
    return result.stdout.decode(errors="replace")


def psql(connection: PgConnection, sql: str, database: str | None = None) -> list[str]:
    """Rows of a one-column query (NUL-separated, so any name survives)."""
    out = run_tool(connection, "psql", "-X", "-q", "-A", "-t", "-0", "-v", "ON_ERROR_STOP=1",
                   "-d", database or connection.maintenance_db, "-c", sql)  # fmt: skip
    return [row.strip("\n") for row in out.split("\0") if row.strip("\n")]


def identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# --- backup ---------------------------------------------------------------------------


def list_databases(connection: PgConnection, exclude: Iterable[str] = ("postgres",)) -> list[str]:
    """Every database that holds data: not a template, accepting connections.

    `postgres` is excluded by default: it is the maintenance database every tool connects
    to, created empty by initdb, and it cannot be dropped while the restore is connected.
    """
    names = psql(connection, "SELECT datname FROM pg_database "
                             "WHERE NOT datistemplate AND datallowconn ORDER BY datname")  # fmt: skip
    skipped = set(exclude)
    return [name for name in names if name not in skipped]


def dump_file_name(database: str) -> str:
    """A file name for a database's dump; a hash for names unsafe as file names."""
    if _SAFE_NAME.match(database) and database not in (MANIFEST, GLOBALS):
        return f"{database}.dump"
    return f"db-{hashlib.sha256(database.encode()).hexdigest()[:16]}.dump"


def dump_all(
    connection: PgConnection, out_dir: Path, exclude: Iterable[str] = ("postgres",)
) -> list[DumpedDatabase]:
    """globals.sql, one `pg_dump -Fc` per database and the manifest naming them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    globals_sql = run_tool(connection, "pg_dumpall", "--globals-only",
                           "-l", connection.maintenance_db)  # fmt: skip
    (out_dir / GLOBALS).write_text(globals_sql)
    dumped: list[DumpedDatabase] = []
    for database in list_databases(connection, exclude):
        path = out_dir / dump_file_name(database)
        # -Fc: compressed custom format; its archive holds CREATE DATABASE for --create.
        run_tool(connection, "pg_dump", "-Fc", "-f", str(path), "-d", database)
        dumped.append(DumpedDatabase(database, path.name, path.stat().st_size))
    manifest = [{"name": d.name, "file": d.file} for d in dumped]
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return dumped


# --- restore --------------------------------------------------------------------------


def read_manifest(in_dir: Path) -> list[tuple[str, str]]:
    """(database, file) pairs of a dump directory."""
    try:
        items = json.loads((in_dir / MANIFEST).read_text())
        pairs = [(str(item["name"]), str(item["file"])) for item in items]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BackupError(f"no readable PostgreSQL dump manifest in {in_dir}: {error}") from error
    for _, file in pairs:
        if "/" in file or file.startswith("."):
            raise BackupError(f"dump manifest in {in_dir} names an unsafe file {file!r}")
    return pairs


def user_table_count(connection: PgConnection, database: str) -> int | None:
    """Tables, partitioned tables and materialized views outside the system schemas;
    None when the database does not exist."""
    exists = psql(connection, f"SELECT 1 FROM pg_database WHERE datname = {literal(database)}")
    if not exists:
        return None
    count = psql(
        connection,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', "
        "'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'",
        database=database,
    )
    return int(count[0])


def check_restorable(
    connection: PgConnection, databases: Sequence[str], *, force: bool
) -> list[str]:
    """The databases a restore would replace; RestoreRefused if one has tables and not force.

    An existing database without user tables (a freshly deployed pod) is replaced silently.
    """
    occupied = {}
    for database in databases:
        count = user_table_count(connection, database)
        if count:
            occupied[database] = count
    if occupied and not force:
        listed = ", ".join(f"{name} ({n} tables)" for name, n in occupied.items())
        raise RestoreRefused(
            f"PostgreSQL at {connection.host}:{connection.port} already holds data in {listed}: "
            "the restore would replace it. Restore with force to drop and replace them."
        )
    return list(occupied)


def filter_globals(script: str, existing: Iterable[str]) -> tuple[str, list[str]]:
    """`pg_dumpall --globals-only` output without the statements for `existing` roles.

    Returns the script and the roles it creates. Roles that exist are left exactly as they
    are: the deployment owns them, and its services log in with the passwords it set.
    Replaying the dump's ALTER ROLE would put the backed-up passwords back (the superuser's
    too, which this restore connects with). Memberships are granted again (a GRANT that
    exists is a notice, not an error).
    """
    present = set(existing)
    kept: list[str] = []
    created: list[str] = []
    for line in script.splitlines():
        match = _ROLE_STATEMENT.match(line)
        if match:
            role = _unquote(match.group(1))
            if role in present:
                continue
            if line.startswith("CREATE ROLE"):
                created.append(role)
        kept.append(line)
    return "\n".join(kept) + "\n", created


def restore_globals(connection: PgConnection, globals_file: Path, work_dir: Path) -> list[str]:
    """Create the dump's roles that do not exist yet (see `filter_globals`); returns them."""
    existing = psql(connection, "SELECT rolname FROM pg_roles")
    filtered, created = filter_globals(globals_file.read_text(), existing)
    script = work_dir / "globals.filtered.sql"
    script.write_text(filtered)
    try:
        run_tool(connection, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                 "-d", connection.maintenance_db, "-f", str(script))  # fmt: skip
    finally:
        script.unlink(missing_ok=True)
    return created


def drop_database(connection: PgConnection, database: str) -> None:
    """Drop `database`, terminating its sessions (WITH (FORCE): PostgreSQL 13+)."""
    psql(connection, f"DROP DATABASE IF EXISTS {identifier(database)} WITH (FORCE)")


def restore_all(
    connection: PgConnection,
    in_dir: Path,
    *,
    force: bool = False,
    only: Iterable[str] | None = None,
) -> list[str]:
    """Restore globals, then every database of the dump (or those in `only`).

    Checks every database before changing any, so a refusal leaves the server untouched.
    Each database is created anew from its archive (`pg_restore --create`): owner,
    encoding and collation come from the dump.
    """
    pairs = read_manifest(in_dir)
    if only is not None:
        wanted = set(only)
        unknown = wanted - {name for name, _ in pairs}
        if unknown:
            raise BackupError(f"the dump in {in_dir} has no database {sorted(unknown)}")
        pairs = [(name, file) for name, file in pairs if name in wanted]
    check_restorable(connection, [name for name, _ in pairs], force=force)
    restore_globals(connection, in_dir / GLOBALS, in_dir)
    for database, file in pairs:
        drop_database(connection, database)  # empty, or force was given
        try:
            run_tool(connection, "pg_restore", "--create", "--exit-on-error",
                     "-d", connection.maintenance_db, str(in_dir / file))  # fmt: skip
        except BackupError as error:
            raise BackupError(f"restoring database {database!r} failed and left it partly "
                              f"restored; fix the cause and restore again with force. "
                              f"{error}") from error  # fmt: skip
    return [name for name, _ in pairs]


# --- helpers --------------------------------------------------------------------------


def _unquote(name: str) -> str:
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return name


def _classify(connection: PgConnection, tool: str, stderr: str) -> BackupError:
    where = f"PostgreSQL at {connection.host}:{connection.port} as {connection.user!r}"
    text = stderr.lower()
    tail = " | ".join(line for line in stderr.strip().splitlines()[-6:] if line.strip())
    if "password authentication failed" in text or "no password supplied" in text:
        return BackupError(f"{tool}: {where} refused the password: give the pod's database "
                           f"password. ({tail})")  # fmt: skip
    if ("could not connect" in text or "connection refused" in text
            or "could not translate host name" in text or "timeout expired" in text):  # fmt: skip
        return BackupError(f"{tool}: cannot reach {where}: is the database up and the host/"
                           f"port right? ({tail})")  # fmt: skip
    return BackupError(f"{tool} failed against {where}: {tail}")
