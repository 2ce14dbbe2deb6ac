"""The backup job of one pod: what its container runs (a zip application, see
render/backup_job.py), and what `python -m unityplan_infra restore` calls in it.

    backup-job.pyz serve    --spec /config/spec.json   # the container: scheduled runs
    backup-job.pyz run      --spec ...                 # one backup now
    backup-job.pyz restore  --spec ... [--snapshot ID] [--what postgres,redis] [--force]
    backup-job.pyz drill    --spec ...                 # restore into scratch, check
    backup-job.pyz snapshots --spec ...
    backup-job.pyz health   --spec ...                 # container healthcheck
    backup-job.pyz idle     --spec ...                 # exit 0 when no job holds the lock

Beside run.py's kinds (PostgreSQL, Redis, Matrix files) this module plugs in JetStream
(backup/jetstream.py) and IPFS (backup/ipfs.py), with their settings from `spec.extra`:

    "jetstream": {"url": "nats://service-nats-dk:4222", "user": "...",
                  "password": {"file": "..."}, "first_pod": "dk"}
    "ipfs": {"api": "http://service-ipfs-dk:5001"}
    "schedule": {"backup": "17 3 * * *", "drill": null, "state_dir": "/work/state"}

The schedule is evaluated with cronsim in the container's clock (UTC). `serve` writes a
heartbeat file from a thread while it lives (a long run is not "unhealthy"); `health`
fails when it is stale, so Docker shows a job that died or hangs its process.

Runs, drills and restores take one lock (`flock` on `<state_dir>/job.lock`): a scheduled
run never starts in the middle of a restore, and `restore` (restore/command.py) asks
`idle` before it starts the services it stopped, so an interrupted client cannot bring
Redis or Synapse back while a restore still writes under them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cronsim import CronSim
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from unityplan_infra.backup import ipfs
from unityplan_infra.backup import jetstream as js
from unityplan_infra.backup import postgres as pg
from unityplan_infra.backup.errors import BackupError, RestoreRefused
from unityplan_infra.backup.run import (
    BackupSpec,
    FilesKind,
    Secret,
    backup_pod,
    register_kind,
    registered_kinds,
    restore_pod,
)

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_USAGE = 0, 1, 3, 2
HEARTBEAT = "heartbeat"
HEARTBEAT_EVERY = 30.0
HEARTBEAT_MAX_AGE = 180.0
LOCK = "job.lock"
STAGE = "stage"
DRILL_PREFIX = "unityplan_drill_"


# --- plugged-in kinds -----------------------------------------------------------------


@dataclass(frozen=True)
class JetStreamSettings:
    url: str
    user: str
    password: Secret
    first_pod: str

    @classmethod
    def of(cls, spec: BackupSpec) -> JetStreamSettings:
        raw = spec.extra["jetstream"]
        return cls(str(raw["url"]), str(raw.get("user", "")),
                   Secret.from_json(raw.get("password", {"value": ""}), "extra.jetstream.password"),
                   str(raw["first_pod"]))  # fmt: skip


class JetStreamKind:
    """Every stream the pod's server leads (R1) and, for the first pod, replicated ones."""

    name = "jetstream"

    def enabled(self, spec: BackupSpec) -> bool:
        return "jetstream" in spec.extra

    def dump(self, spec: BackupSpec, out_dir: Path) -> None:
        asyncio.run(self._dump(JetStreamSettings.of(spec), spec.pod, out_dir))

    async def _dump(self, settings: JetStreamSettings, pod: str, out_dir: Path) -> None:
        nc = await js.connect(settings.url, user=settings.user or None,
                              password=settings.password.reveal() or None)  # fmt: skip
        try:
            listing = await js.list_streams(nc)
            if listing.missing:
                raise BackupError(f"JetStream could not list streams {listing.missing}: a server"
                                  " is out of the cluster; back up when it is healthy")  # fmt: skip
            names = js.streams_to_back_up(pod, listing.streams, first_pod=settings.first_pod)
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in names:
                await js.snapshot_stream(nc, name, out_dir / name)
            (out_dir / "streams.json").write_text(json.dumps({"streams": names}) + "\n")
        finally:
            await nc.close()

    def _streams(self, in_dir: Path) -> list[str]:
        try:
            return [str(s) for s in json.loads((in_dir / "streams.json").read_text())["streams"]]
        except (OSError, ValueError, KeyError) as error:
            raise BackupError(f"no JetStream stream list in the snapshot ({error})") from None

    def check_restore(self, spec: BackupSpec, in_dir: Path, *, force: bool) -> None:
        asyncio.run(self._check(JetStreamSettings.of(spec), self._streams(in_dir), force))

    async def _check(self, settings: JetStreamSettings, names: list[str], force: bool) -> None:
        nc = await js.connect(settings.url, user=settings.user or None,
                              password=settings.password.reveal() or None)  # fmt: skip
        try:
            for name in names:
                info = await js.stream_info(nc, name)
                if info and info.get("state", {}).get("messages", 0) and not force:
                    raise RestoreRefused(f"stream {name} exists and holds messages: restoring"
                                         " would replace it (give --force to do so)")  # fmt: skip
        finally:
            await nc.close()

    def restore(self, spec: BackupSpec, in_dir: Path, *, force: bool) -> None:
        asyncio.run(self._restore(JetStreamSettings.of(spec), in_dir, force))

    async def _restore(self, settings: JetStreamSettings, in_dir: Path, force: bool) -> None:
        nc = await js.connect(settings.url, user=settings.user or None,
                              password=settings.password.reveal() or None)  # fmt: skip
        try:
            for name in self._streams(in_dir):
                await js.restore_stream(nc, name, in_dir / name, force=force)
        finally:
            await nc.close()


class IpfsKind:
    """Every recursive pin, exported as CAR files; a restore only adds (never refuses)."""

    name = "ipfs"

    def enabled(self, spec: BackupSpec) -> bool:
        return "ipfs" in spec.extra

    def _api(self, spec: BackupSpec) -> ipfs.KuboApi:
        return ipfs.KuboApi(str(spec.extra["ipfs"]["api"]))

    def dump(self, spec: BackupSpec, out_dir: Path) -> None:
        ipfs.dump(self._api(spec), out_dir)

    def check_restore(self, spec: BackupSpec, in_dir: Path, *, force: bool) -> None:
        if not (in_dir / ipfs.MANIFEST).is_file():
            raise BackupError("the snapshot holds no IPFS pin manifest")

    def restore(self, spec: BackupSpec, in_dir: Path, *, force: bool) -> None:
        ipfs.restore(self._api(spec), in_dir)


# Synapse's signing key: the program keeps it in the Pulumi state and rewrites it at every
# `up`, so a restore brings it back only when asked for (a lost state).
SIGNING_KEY_KIND = "matrix-key"


def register_plugged_kinds() -> None:
    present = registered_kinds()
    for kind in (JetStreamKind(), IpfsKind(), FilesKind(SIGNING_KEY_KIND)):
        if kind.name not in present:
            register_kind(kind)


def default_restore_kinds(spec: BackupSpec) -> list[str]:
    """What `restore` brings back unless told: every configured kind but the signing key."""
    return [name for name, kind in registered_kinds().items()
            if kind.enabled(spec) and name != SIGNING_KEY_KIND]  # fmt: skip


# --- schedule -------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    backup: str
    drill: str | None
    state_dir: Path

    @classmethod
    def of(cls, spec: BackupSpec) -> Schedule:
        raw: dict[str, Any] = dict(spec.extra.get("schedule") or {})
        if "backup" not in raw:
            raise BackupError("the spec has no extra.schedule.backup (a cron expression)")
        return cls(str(raw["backup"]), raw.get("drill"), Path(raw.get("state_dir", "/work/state")))


def next_time(expression: str, after: datetime) -> datetime:
    return next(iter(CronSim(expression, after)))


class JobBusy(BackupError):
    """Another run, drill or restore of this pod holds the job lock."""


@contextlib.contextmanager
def job_lock(state_dir: Path, *, wait: bool) -> Iterator[None]:
    """The pod's job lock; `wait=False` raises JobBusy at once when it is held."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise JobBusy("another backup, drill or restore of this pod is running") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_idle(state_dir: Path) -> bool:
    try:
        with job_lock(state_dir, wait=False):
            return True
    except JobBusy:
        return False


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.is_set():
        path.write_text(f"{time.time()}\n")
        stop.wait(HEARTBEAT_EVERY)


def serve(spec: BackupSpec, *, stop_after: float | None = None) -> int:
    """Run backups (and drills) on schedule, forever (or `stop_after` seconds, for tests)."""
    schedule = Schedule.of(spec)
    schedule.state_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(schedule.state_dir / HEARTBEAT, stop),
                     daemon=True).start()  # fmt: skip
    try:
        return _loop(spec, schedule, stop_after)
    finally:
        stop.set()


def _loop(spec: BackupSpec, schedule: Schedule, stop_after: float | None) -> int:
    began = time.monotonic()
    now = datetime.now(UTC)
    due = {"backup": next_time(schedule.backup, now)}
    if schedule.drill:
        due["drill"] = next_time(schedule.drill, now)
    _log(f"pod {spec.pod}: next backup {due['backup'].isoformat()}"
         + (f", next drill {due['drill'].isoformat()}" if "drill" in due else ""))  # fmt: skip
    while stop_after is None or time.monotonic() - began < stop_after:
        now = datetime.now(UTC)
        for job, when in sorted(due.items(), key=lambda item: item[1]):
            if when <= now:
                (run_once if job == "backup" else drill)(spec, schedule.state_dir)
                expression = schedule.backup if job == "backup" else schedule.drill
                assert expression is not None
                due[job] = next_time(expression, datetime.now(UTC))
        time.sleep(max(0.05, min(60.0, (min(due.values()) - datetime.now(UTC)).total_seconds())))
    return EXIT_OK


def healthy(spec: BackupSpec) -> bool:
    beat = Schedule.of(spec).state_dir / HEARTBEAT
    try:
        return time.time() - float(beat.read_text()) < HEARTBEAT_MAX_AGE
    except (OSError, ValueError):
        return False


# --- jobs -----------------------------------------------------------------------------


def run_once(spec: BackupSpec, state_dir: Path) -> bool:
    """One backup run; failures are logged and exported as metrics, never raised."""
    try:
        with job_lock(state_dir, wait=False):
            result = backup_pod(spec, state_dir / STAGE)
    except JobBusy as error:
        _log(f"pod {spec.pod}: backup skipped: {error} (a restore?); the next one is on schedule")
        return False
    except BackupError as error:
        _log(f"pod {spec.pod}: backup FAILED: {error}")
        return False
    _log(f"pod {spec.pod}: backup {result.snapshot_id[:8]} of {', '.join(result.kinds)} in"
         f" {result.duration_seconds:.1f}s, added {result.added_bytes} of"
         f" {result.processed_bytes} bytes; {result.snapshots_kept} snapshots kept,"
         f" {result.snapshots_removed} removed")  # fmt: skip
    return True


def drill(spec: BackupSpec, state_dir: Path) -> bool:
    """Restore the latest snapshot's databases into scratch databases and check them.

    The pod's own databases are never touched: each dump goes into `unityplan_drill_<n>`,
    which must restore without error and hold tables, and is dropped afterwards. The
    outcome is a metric (`unityplan_backup_drill_*`) beside the run's.
    """
    started = time.time()
    ok = False
    try:
        with job_lock(state_dir, wait=False):
            ok = _drill(spec, state_dir)
    except BackupError as error:
        _log(f"pod {spec.pod}: drill FAILED: {error}")
    if spec.metrics_dir:
        _drill_metrics(Path(spec.metrics_dir), spec.pod, ok, time.time() - started)
    return ok


def _drill(spec: BackupSpec, state_dir: Path) -> bool:
    if spec.postgres is None:
        raise BackupError("a drill restores PostgreSQL: the spec has none")
    connection = spec.postgres.connection()
    scratch = Path(tempfile.mkdtemp(prefix="drill-", dir=state_dir))
    try:
        spec.restic.client().restore(scratch, snapshot="latest", include=["/postgres"])
        databases = pg.read_manifest(scratch / "postgres")
        if not databases:
            raise BackupError("the latest snapshot holds no database dump")
        for index, (name, file) in enumerate(databases):
            target = f"{DRILL_PREFIX}{index}"
            pg.psql(connection, f"DROP DATABASE IF EXISTS {pg.identifier(target)}")
            pg.psql(connection, f"CREATE DATABASE {pg.identifier(target)}")
            try:
                pg.run_tool(connection, "pg_restore", "--no-owner", "--no-privileges",
                            "--exit-on-error", "-d", target,
                            str(scratch / "postgres" / file))  # fmt: skip
                tables = pg.user_table_count(connection, target)
                if not tables:
                    raise BackupError(f"the dump of {name} restored no table")
                _log(f"pod {spec.pod}: drill: {name} restored with {tables} tables")
            finally:
                pg.drop_database(connection, target)
        return True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _drill_metrics(directory: Path, pod: str, ok: bool, seconds: float) -> None:
    registry = CollectorRegistry()
    labels = {"territory": pod}
    for name, help_text, value in (
        ("last_run_timestamp_seconds", "Unix time the last restore drill ended.", time.time()),
        ("last_run_success", "1 if the last restore drill passed, else 0.", 1.0 if ok else 0.0),
        ("duration_seconds", "Duration of the last restore drill.", seconds),
    ):
        gauge = Gauge(f"unityplan_backup_drill_{name}", help_text, list(labels), registry=registry)
        gauge.labels(**labels).set(value)
    directory.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(directory / f"unityplan_backup_drill_{pod}.prom"), registry)


def _log(message: str) -> None:
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {message}", flush=True)


# --- command line ---------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="backup-job.pyz")
    commands = root.add_subparsers(dest="command", required=True)
    for name in ("serve", "run", "restore", "drill", "snapshots", "health", "idle"):
        command = commands.add_parser(name)
        command.add_argument("--spec", type=Path, required=True)
        if name == "restore":
            command.add_argument("--snapshot", default="latest")
            command.add_argument("--what", default="", help="comma-separated kinds (default: all)")
            command.add_argument("--force", action="store_true")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = BackupSpec.from_json(args.spec.read_text())
    except (OSError, ValueError) as error:
        print(f"backup-job: cannot read the spec {args.spec}: {error}", file=sys.stderr)
        return EXIT_USAGE
    register_plugged_kinds()
    state_dir = Schedule.of(spec).state_dir if "schedule" in spec.extra else Path(tempfile.gettempdir())
    try:
        if args.command == "serve":
            return serve(spec)
        if args.command == "run":
            return EXIT_OK if run_once(spec, state_dir) else EXIT_FAILED
        if args.command == "drill":
            return EXIT_OK if drill(spec, state_dir) else EXIT_FAILED
        if args.command == "health":
            return EXIT_OK if healthy(spec) else EXIT_FAILED
        if args.command == "idle":
            return EXIT_OK if is_idle(state_dir) else EXIT_FAILED
        if args.command == "snapshots":
            for snapshot in spec.restic.client().snapshots(tags=spec.tags):
                print(json.dumps({"id": snapshot.id, "time": snapshot.time.isoformat()}))
            return EXIT_OK
        what = [k for k in args.what.split(",") if k] or default_restore_kinds(spec)
        # Waits for a scheduled run to end: a restore does not race a backup.
        with job_lock(state_dir, wait=True):
            result = restore_pod(spec, args.snapshot, what, args.force, work_dir=state_dir)
        _log(f"pod {spec.pod}: restored {', '.join(result.kinds)} from snapshot"
             f" {result.snapshot_id[:8]} in {result.duration_seconds:.1f}s")  # fmt: skip
        return EXIT_OK
    except RestoreRefused as error:
        print(f"backup-job: refused: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except BackupError as error:
        print(f"backup-job: {error}", file=sys.stderr)
        return EXIT_FAILED
