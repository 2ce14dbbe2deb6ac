"""Backups of a pod against real software: restic (Debian, 0.14), PostgreSQL 15, redis-server
started as the pod starts it, moto as the S3 store. Everything listens on loopback only.

One pod ("dk") is seeded once per module: two databases (`unityplan_dk` and a Synapse-like
`synapse` with C collation) and an extra role, Redis keys of every type (binary names and
values, TTLs), and a Matrix media store plus signing key. Data is compared row by row, key by
key and byte by byte (with mode, owner and mtime for files) after each restore.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as redis_py
from psycopg.types.json import Jsonb

from tests.support.postgres import PG_BIN, Cluster
from tests.support.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoS3, free_port
from unityplan_infra.backup import redis as backup_redis
from unityplan_infra.backup.errors import BackupError, RestoreRefused
from unityplan_infra.backup.files import FileEntry
from unityplan_infra.backup.metrics import read_values
from unityplan_infra.backup.restic import (
    BucketMissing,
    EndpointUnreachable,
    RepositoryLocked,
    Retention,
    WrongPassword,
)
from unityplan_infra.backup.run import (
    BackupSpec,
    FilesKind,
    PostgresSpec,
    RedisSpec,
    ResticSpec,
    RunResult,
    Secret,
    backup_pod,
    restore_pod,
)
from unityplan_infra.render import redis as redis_render

pytestmark = pytest.mark.timeout(120)

BUCKET = "unityplan-backups"
POD = "dk"
PG_OWNER = "unityplan"  # the pod's POSTGRES_USER: the image makes it the superuser
PG_PASSWORD = "pg-" + secrets.token_urlsafe(12)
REDIS_PASSWORD = "redis-" + secrets.token_urlsafe(12)
SYNAPSE_UID = 991  # the Synapse image's user: ownership must survive the round trip


# --- servers --------------------------------------------------------------------------


class RedisServer:
    """redis-server run with the pod's own start command (render/redis.py START)."""

    def __init__(self, root: Path, port: int) -> None:
        self.port = port
        self.data = root / "data"  # the container's /data volume
        self.data.mkdir(parents=True, exist_ok=True)
        # The image's entrypoint only drops privileges before exec; here it just execs.
        shim = root / "bin" / "docker-entrypoint.sh"
        shim.parent.mkdir(exist_ok=True)
        shim.write_text('#!/bin/sh\nexec "$@"\n')
        shim.chmod(0o755)
        self.path = f"{shim.parent}:{os.environ['PATH']}"
        self.log = root / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # One change to the pod's command: a diskless snapshot (what `redis-cli --rdb` gets)
        # otherwise waits repl-diskless-sync-delay (5 s) for more replicas to join.
        command = (f"{redis_render.START} --port {self.port} --bind 127.0.0.1"
                   " --repl-diskless-sync-max-replicas 1")  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["sh", "-c", command], cwd=self.data, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PATH": self.path, "REDIS_PASSWORD": REDIS_PASSWORD},
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            try:
                if self.client().ping():
                    return
            except redis_py.exceptions.ConnectionError:
                pass
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "redis-server not ready in 15s"
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, as `docker stop` sends: Redis fsyncs the AOF, saves the RDB and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)
        self.process = None

    def client(self) -> redis_py.Redis:
        return redis_py.Redis(host="127.0.0.1", port=self.port, password=REDIS_PASSWORD,
                              socket_timeout=5)  # fmt: skip


@dataclasses.dataclass
class Pod:
    root: Path
    cluster: Cluster
    redis: RedisServer
    media: Path
    signing_key: Path
    metrics_dir: Path
    spec: BackupSpec
    s3: MotoS3

    def stage(self) -> Path:
        return self.root / "stage"


@pytest.fixture(scope="module")
def s3() -> MotoS3:
    server = MotoS3.shared()
    if not server.bucket_exists(BUCKET):
        server.create_bucket(BUCKET)
    return server


def make_spec(
    s3: MotoS3, root: Path, *, pod: str = POD, redis_port: int = 0, pg_port: int = 0,
    redis_data: Path | None = None, media: Path | None = None, key: Path | None = None,
) -> BackupSpec:  # fmt: skip
    password_file = root / f"restic-password-{pod}"
    if not password_file.exists():
        password_file.write_text(secrets.token_urlsafe(32) + "\n")
        password_file.chmod(0o600)
    os.environ["TEST_BACKUP_S3_SECRET"] = SECRET_ACCESS_KEY
    restic = ResticSpec(
        endpoint=s3.endpoint, bucket=BUCKET, path=f"pods/{pod}",
        access_key_id=Secret(value=ACCESS_KEY_ID),
        secret_access_key=Secret(env="TEST_BACKUP_S3_SECRET"),
        password=Secret(file=str(password_file)), region="us-east-1",
        cache_dir=str(root / "restic-cache"), timeout=120,
    )  # fmt: skip
    spec = BackupSpec(
        pod=pod,
        pod_name={"dk": "Denmark"}.get(pod, ""),
        restic=restic,
        retention=Retention(daily=7, weekly=4, monthly=6),
        postgres=PostgresSpec(host="127.0.0.1", port=pg_port, user=PG_OWNER,
                              password=Secret(value=PG_PASSWORD), bin_dir=str(PG_BIN),
                              timeout=60) if pg_port else None,
        redis=RedisSpec(host="127.0.0.1", port=redis_port, password=Secret(value=REDIS_PASSWORD),
                        data_dir=str(redis_data), timeout=30) if redis_port else None,
        files={"matrix": (FileEntry("media_store", str(media), optional=True),
                          FileEntry("signing.key", str(key)))} if media and key else {},
        metrics_dir=str(root / "textfile"),
    )  # fmt: skip
    # What the container gets is the JSON the Pulumi program renders: use that path.
    return BackupSpec.from_json(spec.to_json())


@pytest.fixture(scope="module")
def pod(s3: MotoS3) -> Iterator[Pod]:
    root = Path(tempfile.mkdtemp(prefix="unityplan-backup-test-"))
    cluster = Cluster.create(port=free_port())
    redis_server = RedisServer(root / "redis", free_port())
    try:
        cluster.start(listen="127.0.0.1")
        redis_server.start()
        media, key = root / "matrix" / "media_store", root / "matrix" / "signing.key"
        spec = make_spec(s3, root, redis_port=redis_server.port, pg_port=cluster.port,
                         redis_data=redis_server.data, media=media, key=key)  # fmt: skip
        the_pod = Pod(root, cluster, redis_server, media, key, root / "textfile", spec, s3)
        seed(the_pod)
        yield the_pod
    finally:
        redis_server.stop()
        cluster.remove()
        shutil.rmtree(root, ignore_errors=True)


# --- data -----------------------------------------------------------------------------


def seed(pod: Pod) -> None:
    rng = random.Random(10)
    c = pod.cluster
    c.psql("-c", f"CREATE ROLE {PG_OWNER} SUPERUSER LOGIN PASSWORD '{PG_PASSWORD}'")
    c.psql("-c", "CREATE ROLE synapse_reader NOLOGIN")
    # As the pod's init script creates them (render/postgres.py).
    c.psql("-c", f"CREATE DATABASE unityplan_{POD} OWNER {PG_OWNER}")
    c.psql("-c", f"CREATE DATABASE synapse OWNER {PG_OWNER} ENCODING 'UTF8' LC_COLLATE 'C' "
                 "LC_CTYPE 'C' TEMPLATE template0")  # fmt: skip
    with pg_connect(pod, f"unityplan_{POD}") as conn:
        conn.execute("CREATE TABLE members (id bigserial PRIMARY KEY, name text NOT NULL, "
                     "payload bytea, joined timestamptz, profile jsonb)")  # fmt: skip
        names = ["Ærø", "Þórr", "Åsa 🌍", "O'Brien", "tab\tand\nnewline", "plain"]
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO members (name, payload, joined, profile) VALUES (%s, %s, %s, %s)",
                [(f"{names[i % len(names)]} {i}", rng.randbytes(2048),
                  datetime(2025, 1, 1, tzinfo=UTC).replace(second=i % 60),
                  Jsonb({"i": i, "tags": ["a", "b"]})) for i in range(2000)],
            )  # fmt: skip
        conn.execute("CREATE INDEX members_name ON members (name)")
        conn.execute("CREATE VIEW recent AS SELECT id, name FROM members WHERE id > 1990")
    with pg_connect(pod, "synapse") as conn:
        conn.execute("CREATE TABLE events (stream_ordering bigint PRIMARY KEY, "
                     "event_id text UNIQUE, json text)")  # fmt: skip
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO events VALUES (%s, %s, %s)",
                [(i, f"${secrets.token_urlsafe(8)}:{POD}", f'{{"n": {i}}}') for i in range(3000)],
            )
        conn.execute("GRANT SELECT ON events TO synapse_reader")
    c.psql("-c", f"GRANT synapse_reader TO {PG_OWNER}")

    client = pod.redis.client()
    client.set("territory", "dk")
    client.set(b"bin:\x00\xff\x01key", bytes(range(256)) * 8)
    for i in range(32):  # ~2 MiB that does not compress: several restic chunks
        client.set(f"blob:{i}", rng.randbytes(64 * 1024))
    client.hset("hash", mapping={"a": "1", "b": b"\x00\x01", "ü": "✓"})
    client.rpush("list", *[f"item{i}" for i in range(100)])
    client.sadd("set", *range(50))
    client.zadd("zset", {"x": 1.5, "y": -2.25, "z": 1e10})
    client.xadd("stream", {"field": "value"}, id="1-1")
    client.xadd("stream", {"field": b"\xffbinary"}, id="2-1")
    for i in range(10):
        client.set(f"ttl:{i}", i, px=3_600_000 + i * 1000)

    media = pod.media
    for i in range(12):
        path = media / "local_content" / f"{i:02x}" / f"{i:04x}" / f"media{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        # A few large files (dedup spans chunks) and many small ones.
        path.write_bytes(rng.randbytes(1024 * 1024 if i < 3 else 1000 + i))
    (media / "local_thumbnails" / "empty").mkdir(parents=True)
    (media / "url_cache").mkdir()
    (media / "url_cache" / "page.html").write_text("<html>ok</html>")
    pod.signing_key.write_text("ed25519 a_AbCd " + secrets.token_urlsafe(32) + "\n")
    pod.signing_key.chmod(0o600)
    for path in [media.parent, *media.parent.rglob("*")]:
        os.chown(path, SYNAPSE_UID, SYNAPSE_UID)
    os.utime(pod.signing_key, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))


def pg_connect(pod: Pod, database: str) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=pod.cluster.port, user=PG_OWNER,
                           password=PG_PASSWORD, dbname=database, autocommit=True,
                           connect_timeout=5)  # fmt: skip


def pg_state(pod: Pod) -> dict[str, Any]:
    """Every row of every table, plus what a restore must recreate around them."""
    rows = {d: pod.cluster.query(f"SELECT datname FROM pg_database WHERE datname = '{d}'")
            for d in (f"unityplan_{POD}", "synapse")}  # fmt: skip
    state: dict[str, Any] = {"databases": rows}
    if all(rows.values()):
        with pg_connect(pod, f"unityplan_{POD}") as conn:
            state["members"] = conn.execute("SELECT * FROM members ORDER BY id").fetchall()
            state["seq"] = conn.execute("SELECT last_value FROM members_id_seq").fetchall()
            state["view"] = conn.execute("SELECT * FROM recent ORDER BY id").fetchall()
        with pg_connect(pod, "synapse") as conn:
            state["events"] = conn.execute("SELECT * FROM events ORDER BY 1").fetchall()
            state["grants"] = conn.execute(
                "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
                "WHERE table_name = 'events' ORDER BY 1, 2").fetchall()  # fmt: skip
    state["dbinfo"] = pod.cluster.query(
        "SELECT datname, pg_get_userbyid(datdba), datcollate, datctype, "
        "pg_encoding_to_char(encoding) FROM pg_database ORDER BY 1")  # fmt: skip
    state["roles"] = pod.cluster.query(
        "SELECT r.rolname, r.rolsuper, r.rolcanlogin, "
        "(SELECT string_agg(m.rolname, ',') FROM pg_auth_members a "
        " JOIN pg_roles m ON m.oid = a.roleid WHERE a.member = r.oid) "
        "FROM pg_roles r WHERE r.rolname NOT LIKE 'pg\\_%' ORDER BY 1")  # fmt: skip
    return state


def redis_state(client: redis_py.Redis) -> dict[bytes, tuple[str, Any]]:
    state: dict[bytes, tuple[str, Any]] = {}
    for key in client.scan_iter(count=1000):
        raw = client.type(key)
        kind = raw.decode() if isinstance(raw, bytes) else str(raw)
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            raise AssertionError(f"unexpected type {kind}")
        state[key] = (kind, value)
    return state


def redis_ttls(client: redis_py.Redis) -> dict[bytes, int]:
    return {key: client.pttl(key) for key in client.scan_iter(match="ttl:*")}


def tree_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every file and directory under `root` (root included): type, bytes, mode, owner,
    and mtime for files."""
    if not root.exists():
        return {}
    state: dict[str, tuple[Any, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
        info = path.lstat()
        relative = str(path.relative_to(root))
        if stat.S_ISDIR(info.st_mode):
            state[relative] = ("dir", stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[relative] = ("file", digest, stat.S_IMODE(info.st_mode), info.st_uid,
                               info.st_gid, info.st_mtime_ns)  # fmt: skip
    return state


def full_state(pod: Pod) -> dict[str, Any]:
    return {"pg": pg_state(pod), "redis": redis_state(pod.redis.client()),
            "media": tree_state(pod.media), "key": tree_state(pod.signing_key)}  # fmt: skip


# --- runs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(pod: Pod) -> tuple[RunResult, RunResult, dict[str, Any]]:
    """Two back-to-back backups of unchanged data (the dedup measurement) and the state."""
    before = full_state(pod)
    first = backup_pod(pod.spec, pod.stage())
    second = backup_pod(pod.spec, pod.stage())
    assert full_state(pod) == before, "a backup changed the pod's data"
    return first, second, before


def test_backup_then_restore_after_destruction_gives_back_every_row_key_and_file(
    pod: Pod, two_runs: tuple[RunResult, RunResult, dict[str, Any]]
) -> None:
    first, second, before = two_runs
    ttls_before = redis_ttls(pod.redis.client())
    assert first.repository_created and not second.repository_created
    assert set(first.kinds) == {"postgres", "redis", "matrix"}
    left = [path.name for path in pod.stage().iterdir()]
    assert left == [".unityplan-backup-stage"], "plaintext dumps left in the staging directory"

    # Destroy: databases and the extra role dropped, FLUSHALL, files deleted.
    for database in (f"unityplan_{POD}", "synapse"):
        pod.cluster.psql("-c", f"DROP DATABASE {database} WITH (FORCE)")
    pod.cluster.psql("-c", "DROP ROLE synapse_reader")
    pod.redis.client().flushall()
    pod.redis.stop()  # as the orchestrator stops the container for a file-level restore
    shutil.rmtree(pod.media)
    pod.signing_key.unlink()

    # FLUSHALL left commands in the AOF, so Redis counts as holding data: the restore asks
    # for force, and refuses before changing anything else.
    with pytest.raises(RestoreRefused, match="Redis data directory"):
        restore_pod(pod.spec)
    assert not pod.media.exists() and not pod.signing_key.exists()
    assert pod.cluster.query("SELECT 1 FROM pg_database WHERE datname = 'synapse'") == []

    clock = time.monotonic()
    result = restore_pod(pod.spec, force=True)
    restore_seconds = time.monotonic() - clock
    assert result.snapshot_id.startswith(second.snapshot_id)
    assert set(result.kinds) == {"postgres", "redis", "matrix"}

    pod.redis.start()
    after = full_state(pod)
    for part in ("pg", "redis", "media", "key"):
        assert after[part] == before[part], f"{part} differs after the restore"
    ttls = redis_ttls(pod.redis.client())
    assert ttls.keys() == ttls_before.keys()
    assert all(0 < ttls[k] <= ttls_before[k] for k in ttls), "TTLs lost or grown"

    # The restored dataset lives in the AOF: it survives restarts and takes new writes.
    pod.redis.client().set("after-restore", "1")
    pod.redis.stop()
    pod.redis.start()
    assert pod.redis.client().get("after-restore") == b"1"
    pod.redis.client().delete("after-restore")
    assert redis_state(pod.redis.client()) == before["redis"]
    print(f"\nbackup 1: {first.duration_seconds:.2f}s, backup 2: {second.duration_seconds:.2f}s,"
          f" restore: {restore_seconds:.2f}s; processed {first.processed_bytes} bytes")  # fmt: skip


def test_a_second_backup_of_unchanged_data_adds_almost_nothing(
    pod: Pod, two_runs: tuple[RunResult, RunResult, dict[str, Any]]
) -> None:
    """Every dump is made anew, and each one's header carries its creation time (pg_dump's
    archive header, the RDB's ctime aux field, the `\\restrict` key of globals.sql, the run
    manifest): those five files differ in their first bytes only, and the RDB also in its
    final checksum. restic's content-defined chunking re-synchronises after a change, so run
    2 stores only the chunks holding changed bytes (at most 6) and nothing of the media.
    How many bytes those chunks hold depends on the repository's random chunker polynomial
    (chunks are 0.5 to 8 MiB, 1 MiB on average), so the byte bound is the structural one."""
    first, second, _ = two_runs
    media = sum(path.stat().st_size for path in pod.media.rglob("*") if path.is_file())
    ratio = second.added_bytes / first.added_bytes
    print(f"\ndedup: run 1 added {first.added_bytes} bytes in {first.added_chunks} chunks "
          f"({first.processed_bytes} read); run 2 added {second.added_bytes} bytes in "
          f"{second.added_chunks} chunks ({ratio:.1%} of run 1)")  # fmt: skip
    assert first.added_bytes > 9_000_000  # ~10 MB of incompressible seeded data
    assert second.processed_bytes == pytest.approx(first.processed_bytes, rel=0.01)
    assert second.added_chunks <= 6, "more new chunks than the changed bytes can explain"
    assert second.added_bytes <= first.added_bytes - media + 64 * 1024, "media stored again"


def test_metrics_file_passes_promtool_and_holds_the_run(
    pod: Pod, two_runs: tuple[RunResult, RunResult, dict[str, Any]]
) -> None:
    _, second, _ = two_runs
    path = pod.metrics_dir / f"unityplan_backup_{POD}.prom"
    text = path.read_text()
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    # Labelled like every per-pod series (pod name and territory code), as the alerts expect.
    assert f'unityplan_backup_last_run_success{{pod="Denmark",territory="{POD}"}} 1.0' in text
    values = read_values(path)
    assert values["last_success_timestamp_seconds"] == values["last_run_timestamp_seconds"]
    assert abs(values["last_success_timestamp_seconds"] - time.time()) < 120
    assert values["added_bytes"] == second.added_bytes
    assert values["processed_bytes"] == second.processed_bytes
    assert values["duration_seconds"] == pytest.approx(second.duration_seconds, rel=0.01)
    assert values["snapshots"] == second.snapshots_kept
    assert not [p for p in pod.metrics_dir.iterdir() if p.suffix != ".prom"], "temp file left"


def test_wrong_password_fails_clearly_and_changes_nothing(
    pod: Pod, two_runs: tuple[RunResult, RunResult, dict[str, Any]]
) -> None:
    restic = pod.spec.restic.client()
    snapshots = restic.snapshots()
    metrics = pod.metrics_dir / f"unityplan_backup_{POD}.prom"
    success_before = read_values(metrics)["last_success_timestamp_seconds"]
    state = full_state(pod)
    wrong = dataclasses.replace(
        pod.spec, restic=dataclasses.replace(pod.spec.restic, password=Secret(value="wrong"))
    )
    with pytest.raises(WrongPassword, match="wrong password") as caught:
        backup_pod(wrong, pod.stage())
    assert "do not initialise it again" in str(caught.value)
    with pytest.raises(WrongPassword):  # a forced restore never got to drop anything
        restore_pod(wrong, force=True)
    assert full_state(pod) == state
    assert restic.snapshots() == snapshots
    values = read_values(metrics)
    assert values["last_run_success"] == 0
    assert values["last_success_timestamp_seconds"] == success_before
    check = subprocess.run(["promtool", "check", "metrics"], input=metrics.read_text(),
                           capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert check.returncode == 0, check.stderr


def test_unreachable_endpoint_fails_fast_and_clearly(pod: Pod) -> None:
    state = full_state(pod)
    closed = f"http://127.0.0.1:{free_port()}"
    unreachable = dataclasses.replace(
        pod.spec, restic=dataclasses.replace(pod.spec.restic, endpoint=closed)
    )
    clock = time.monotonic()
    with pytest.raises(EndpointUnreachable, match="cannot reach the S3 endpoint") as caught:
        backup_pod(unreachable, pod.stage())
    assert closed in str(caught.value)
    with pytest.raises(EndpointUnreachable):
        restore_pod(unreachable, force=True)
    assert time.monotonic() - clock < 20
    assert full_state(pod) == state


def test_missing_bucket_is_named_and_not_created(pod: Pod) -> None:
    missing = dataclasses.replace(
        pod.spec, restic=dataclasses.replace(pod.spec.restic, bucket="unityplan-missing")
    )
    with pytest.raises(BucketMissing, match="'unityplan-missing' does not exist"):
        backup_pod(missing, pod.stage())
    assert not pod.s3.bucket_exists("unityplan-missing")


def test_an_existing_repository_is_never_initialised_again(
    pod: Pod, two_runs: tuple[RunResult, RunResult, dict[str, Any]]
) -> None:
    restic = pod.spec.restic.client()
    config = restic.run("cat", "config").stdout
    assert restic.init_if_missing() is False
    assert restic.run("cat", "config").stdout == config


def test_restore_onto_data_is_refused_without_force_and_replaces_it_with_force(
    pod: Pod, two_runs: tuple[RunResult, RunResult, dict[str, Any]]
) -> None:
    _, _, backed_up = two_runs
    with pg_connect(pod, f"unityplan_{POD}") as conn:
        conn.execute("UPDATE members SET name = 'changed' WHERE id = 1")
        conn.execute("CREATE TABLE added_later (x int)")
    pod.redis.client().set("territory", "changed")
    (pod.media / "url_cache" / "page.html").write_text("changed")
    changed = full_state(pod)

    with pytest.raises(RestoreRefused, match=f"unityplan_{POD} \\(2 tables\\)"):
        restore_pod(pod.spec, what={"postgres"})
    with pytest.raises(RestoreRefused, match="media_store"):
        restore_pod(pod.spec, what={"matrix"})
    with pytest.raises(BackupError, match="is running"):  # Redis: only into a stopped server
        restore_pod(pod.spec, what={"redis"}, force=True)
    pod.redis.stop()
    with pytest.raises(RestoreRefused, match="Redis data directory"):
        restore_pod(pod.spec, what={"redis"})
    pod.redis.start()
    assert full_state(pod) == changed

    # With force, PostgreSQL sessions on the database are terminated and it is replaced.
    session = pg_connect(pod, f"unityplan_{POD}")
    restore_pod(pod.spec, what={"postgres", "matrix"}, force=True)
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    pod.redis.stop()
    restore_pod(pod.spec, what=["redis"], force=True)
    pod.redis.start()
    after = full_state(pod)
    for part in ("pg", "redis", "media", "key"):
        assert after[part] == backed_up[part], f"{part} not replaced by the backup"


def test_redis_7_with_appendonly_ignores_a_lone_dump_rdb_but_loads_the_restored_aof(
    pod: Pod, two_runs: tuple[RunResult, RunResult, dict[str, Any]], tmp_path: Path
) -> None:
    """The measurement behind redis.restore_files, kept as a test: a restore that only put
    dump.rdb into the data directory would come up empty."""
    snapshot = tmp_path / "snapshot.rdb"
    backup_redis.snapshot(pod.spec.redis.connection(), snapshot)  # type: ignore[union-attr]
    expected = redis_state(pod.redis.client())

    naive = RedisServer(tmp_path / "naive", free_port())
    shutil.copyfile(snapshot, naive.data / "dump.rdb")
    naive.start()
    try:
        assert naive.client().dbsize() == 0  # appendonly yes: only the AOF is ever loaded
    finally:
        naive.stop()
    # It made itself an empty AOF base and, at shutdown, saved the empty set over dump.rdb.
    assert backup_redis.rdb_is_empty(naive.data / "appendonlydir" / "appendonly.aof.1.base.rdb")
    assert backup_redis.rdb_is_empty(naive.data / "dump.rdb"), "Redis saved over dump.rdb"
    assert not backup_redis.has_data(backup_redis.RedisLayout(naive.data))

    proper = RedisServer(tmp_path / "proper", free_port())
    layout = backup_redis.RedisLayout(proper.data)
    backup_redis.restore_files(snapshot, layout)
    proper.start()
    try:
        assert redis_state(proper.client()) == expected
        # Redis rewrites such an AOF like its own: a new base (seq 2) replaces ours.
        proper.client().bgrewriteaof()
        deadline = time.monotonic() + 10
        while proper.client().info("persistence")["aof_rewrite_in_progress"]:
            assert time.monotonic() < deadline, "AOF rewrite did not finish"
            time.sleep(0.05)
        assert (layout.aof_dir / "appendonly.aof.2.base.rdb").exists()
    finally:
        proper.stop()
    proper.start()
    try:
        assert redis_state(proper.client()) == expected
    finally:
        proper.stop()
    assert backup_redis.has_data(layout)


def test_retention_keeps_what_daily_weekly_monthly_say(s3: MotoS3, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    spec = make_spec(s3, tmp_path, pod="rt", media=data / "f", key=data / "f")
    spec = dataclasses.replace(
        spec, retention=Retention(daily=2, weekly=2, monthly=2),
        files={"matrix": (FileEntry("f", str(data / "f")),)},
    )  # fmt: skip
    times = ["2026-01-15 10:00", "2026-02-20 10:00", "2026-02-27 10:00", "2026-03-07 10:00",
             "2026-03-09 10:00", "2026-03-10 08:00", "2026-03-10 10:00"]  # fmt: skip
    restic = spec.restic.client()
    restic.init_if_missing()
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "backup.json").write_text('{"pod": "rt", "kinds": []}')
    for text in times[:-1]:
        moment = datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        restic.backup(stage, tags=spec.tags, host=spec.host, time=moment)
    shutil.rmtree(stage)
    # The last one through the orchestrator, which applies the retention and prunes.
    last = datetime.strptime(times[-1], "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    result = backup_pod(spec, tmp_path / "stage2", kinds={"matrix": FilesKind("matrix")},
                        snapshot_time=last)  # fmt: skip
    kept = sorted(s.time.strftime("%Y-%m-%d %H:%M") for s in restic.snapshots(tags=spec.tags))
    # daily 2: 03-10 10:00 and 03-09; weekly 2 (ISO weeks 11 and 10): + 03-07; monthly 2
    # (March, February): + 02-27. Gone: the older one of 03-10, 02-20 and January.
    assert kept == ["2026-02-27 10:00", "2026-03-07 10:00", "2026-03-09 10:00",
                    "2026-03-10 10:00"]  # fmt: skip
    assert (result.snapshots_kept, result.snapshots_removed) == (4, 3)
    restic.run("check")  # prune left a consistent repository


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(
    pod: Pod, two_runs: tuple[RunResult, RunResult, dict[str, Any]]
) -> None:
    restic = pod.spec.restic.client()
    # `backup --stdin` holds its lock while it waits for input: kill -9 it there.
    holder = subprocess.Popen(
        restic.argv("backup", "--stdin", "--stdin-filename", "held", "--host", "killed"),
        env=restic.environment(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not restic.run("list", "locks", "--no-lock").stdout.strip():
            assert holder.poll() is None and time.monotonic() < deadline, "no lock appeared"
            time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    forget = ["forget", "--group-by", "tags", "--tag", f"pod={POD}", *pod.spec.retention.args()]
    with pytest.raises(RepositoryLocked, match="restic unlock"):
        restic._run_once(*forget)  # the lock is real: forget needs the repository alone
    restic.forget(pod.spec.retention, tags=pod.spec.tags)  # removes the stale lock, retries
    assert restic.run("list", "locks", "--no-lock").stdout.strip() == ""
