"""The backup spec's JSON form, the kind registry, and the pure parts of the kinds: the
globals filter, dump file names, the RDB emptiness check and the metrics file's carry-over."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from unityplan_infra.backup import postgres as pg
from unityplan_infra.backup import redis as rd
from unityplan_infra.backup.errors import BackupError
from unityplan_infra.backup.files import FileEntry
from unityplan_infra.backup.metrics import RunMetrics, read_values, write_metrics
from unityplan_infra.backup.restic import Retention
from unityplan_infra.backup.run import (
    BackupSpec,
    FilesKind,
    PostgresSpec,
    RedisSpec,
    ResticSpec,
    Secret,
    kinds_of,
    register_kind,
    registered_kinds,
)


def spec() -> BackupSpec:
    return BackupSpec(
        pod="dk",
        pod_name="Denmark",
        restic=ResticSpec(
            endpoint="https://fsn1.your-objectstorage.com",
            bucket="unityplan-backups",
            path="unityplan/dk",
            access_key_id=Secret(env="BACKUP_S3_ACCESS_KEY"),
            secret_access_key=Secret(env="BACKUP_S3_SECRET_KEY"),
            password=Secret(file="/run/secrets/restic-password"),
            region="fsn1",
        ),
        retention=Retention(daily=7, weekly=4, monthly=12),
        postgres=PostgresSpec(
            host="unityplan-dk-postgres", password=Secret(env="PGPASS"), user="unityplan"
        ),
        redis=RedisSpec(
            host="unityplan-dk-redis",
            password=Secret(env="REDIS_PASSWORD"),
            data_dir="/volumes/redis",
        ),
        files={
            "matrix": (
                FileEntry("media_store", "/volumes/matrix/media_store", True),
                FileEntry("signing.key", "/volumes/matrix-config/signing.key"),
            )
        },
        metrics_dir="/textfile",
        extra={"jetstream": {"streams": ["GLOBAL_EVENTS"]}},
    )


def test_spec_round_trips_through_json_without_secret_values() -> None:
    original = spec()
    text = original.to_json()
    assert BackupSpec.from_json(text) == original
    assert BackupSpec.from_json(json.loads(text)) == original
    data = json.loads(text)
    assert data["restic"]["password"] == {"file": "/run/secrets/restic-password"}
    assert data["postgres"]["exclude"] == ["postgres"]


def test_minimal_spec_takes_the_defaults() -> None:
    minimal = {
        "pod": "no",
        "restic": {
            "endpoint": "http://minio:9000",
            "bucket": "backups",
            "path": "no",
            "access_key_id": "ak",
            "secret_access_key": {"env": "S3_SECRET"},
            "password": {"file": "/p"},
        },
    }
    parsed = BackupSpec.from_json(json.dumps(minimal))
    assert parsed.retention == Retention(7, 4, 6)
    assert parsed.postgres is None and parsed.redis is None and parsed.files == {}
    assert parsed.tags == ["pod=no"] and parsed.host == "unityplan-no"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(typo=1), "unknown keys"),
        (lambda d: d["restic"].update(bukket="x"), "restic: unknown keys"),
        (lambda d: d["postgres"].update(port="5432"), "postgres.port must be an integer"),
        (lambda d: d["restic"].update(password={"file": "/a", "env": "B"}), "exactly one"),
        (lambda d: d["retention"].update(daily=0, weekly=0, monthly=0), "keep something"),
        (lambda d: d["files"]["matrix"][0].update(name="../x"), "plain file name"),
        (lambda d: d.update(version=2), "spec version"),
        (lambda d: d.update(pod="d k"), "pod code"),
    ],
)
def test_spec_errors_name_the_key(change: object, message: str) -> None:
    data = json.loads(spec().to_json())
    change(data)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        BackupSpec.from_json(data)


def test_secrets_resolve_from_value_file_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "s").write_text("from-file\n")
    monkeypatch.setenv("BACKUP_TEST_SECRET", "from-env")
    assert Secret(file=str(tmp_path / "s")).reveal() == "from-file"
    assert Secret(env="BACKUP_TEST_SECRET").reveal() == "from-env"
    assert "hidden" not in repr(Secret(value="hidden"))
    assert "hidden" not in repr(PostgresSpec(host="h", password=Secret(value="hidden")))
    with pytest.raises(BackupError, match="NOT_SET_ANYWHERE"):
        Secret(env="NOT_SET_ANYWHERE").reveal()


def test_every_files_entry_gets_a_kind_even_unregistered() -> None:
    with_key = dataclasses.replace(
        spec(), files={**spec().files, "matrix-key": (FileEntry("signing.key", "/k"),)}
    )
    kinds = kinds_of(with_key)
    assert list(kinds)[:3] == ["postgres", "redis", "matrix"]
    assert kinds["matrix-key"].enabled(with_key)


def test_the_pod_name_labels_the_metrics_and_falls_back(tmp_path: Path) -> None:
    assert spec().display_name == "Denmark"
    legacy = dataclasses.replace(spec(), pod_name="", extra={"pod_name": "Danmark"})
    assert legacy.display_name == "Danmark"
    assert dataclasses.replace(spec(), pod_name="").display_name == "dk"
    path = write_metrics(tmp_path, RunMetrics("dk", 1.0, 1.0, success=True, pod_name="Denmark"))
    assert 'unityplan_backup_last_run_success{pod="Denmark",territory="dk"} 1.0' in path.read_text()


def test_kinds_register_once_in_order() -> None:
    assert list(registered_kinds())[:3] == ["postgres", "redis", "matrix"]
    with pytest.raises(ValueError, match="already registered"):
        register_kind(FilesKind("matrix"))
    with pytest.raises(ValueError, match="plain directory name"):
        register_kind(FilesKind("../x"))


GLOBALS = "\n".join(
    [
        "\\restrict abc",
        'CREATE ROLE "Weird ""Role""";',
        'ALTER ROLE "Weird ""Role""" WITH NOSUPERUSER NOLOGIN;',
        "CREATE ROLE unityplan;",
        "ALTER ROLE unityplan WITH SUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$old';",
        "ALTER ROLE unityplan SET work_mem TO '8MB';",
        'GRANT "Weird ""Role""" TO unityplan GRANTED BY unityplan;',
        "\\unrestrict abc",
    ]
)


def test_globals_keep_existing_roles_as_they_are() -> None:
    script, created = pg.filter_globals(GLOBALS, existing=["unityplan", "postgres"])
    assert created == ['Weird "Role"']
    assert "PASSWORD" not in script and "ALTER ROLE unityplan" not in script
    assert 'CREATE ROLE "Weird ""Role""";' in script and "GRANT" in script
    script, created = pg.filter_globals(GLOBALS, existing=[])
    assert created == ['Weird "Role"', "unityplan"] and "PASSWORD" in script


def test_dump_file_names_are_safe() -> None:
    assert pg.dump_file_name("unityplan_dk") == "unityplan_dk.dump"
    for odd in ("../etc", "a b", "globals.sql", "databases.json", "ø"):
        name = pg.dump_file_name(odd)
        assert name.startswith("db-") and "/" not in name


def rdb(*body: bytes) -> bytes:
    return b"REDIS0010" + b"".join(body) + b"\xff" + b"\0" * 8


def aux(key: bytes, value: bytes) -> bytes:
    return b"\xfa" + bytes([len(key)]) + key + value


def test_rdb_emptiness_reads_past_aux_fields(tmp_path: Path) -> None:
    path = tmp_path / "x.rdb"
    cases = {
        rdb(): True,
        rdb(
            aux(b"redis-ver", b"\x067.0.15"),
            aux(b"redis-bits", b"\xc0\x40"),
            aux(b"ctime", b"\xc2\x01\x02\x03\x04"),
            aux(b"aof-base", b"\xc0\x00"),
        ): True,
        rdb(aux(b"redis-ver", b"\x067.0.15"), b"\xfe\x00\xfb\x01\x00\x00\x01k\x01v"): False,
        b"NOTREDIS": False,
        b"REDIS0010\xfa\x09redis": False,  # truncated: counts as data
    }
    for data, empty in cases.items():
        path.write_bytes(data)
        assert rd.rdb_is_empty(path) is empty, data


def test_a_failed_run_keeps_the_last_success_in_the_metrics(tmp_path: Path) -> None:
    ok = RunMetrics(
        "dk",
        finished=1000.0,
        duration_seconds=12.5,
        success=True,
        added_bytes=2048,
        processed_bytes=10_000,
        snapshots=3,
    )
    path = write_metrics(tmp_path, ok)
    assert path.name == "unityplan_backup_dk.prom"
    write_metrics(tmp_path, RunMetrics("dk", finished=2000.0, duration_seconds=1.0, success=False))
    values = read_values(path)
    assert values == {
        "last_success_timestamp_seconds": 1000.0,
        "last_run_timestamp_seconds": 2000.0,
        "last_run_success": 0.0,
        "duration_seconds": 1.0,
        "added_bytes": 2048.0,
        "processed_bytes": 10_000.0,
        "snapshots": 3.0,
    }
    assert os.listdir(tmp_path) == [path.name]
    fresh = write_metrics(tmp_path / "new", RunMetrics("no", 5.0, 1.0, success=False))
    assert read_values(fresh)["last_success_timestamp_seconds"] == 0.0
    with pytest.raises(ValueError):
        write_metrics(tmp_path, RunMetrics("../x", 1.0, 1.0, success=True))
