"""Back up and restore one pod: the spec, the pluggable kinds, and the two entry points.

A run dumps every configured kind into a staging directory, one subdirectory per kind:

    <stage>/backup.json              pod, time and kinds of this run
    <stage>/postgres/globals.sql     roles; <db>.dump per database; databases.json
    <stage>/redis/dump.rdb           consistent RDB snapshot from the running server
    <stage>/matrix/media_store/...   files (and signing.key; files.json lists them)

and stores it as ONE restic snapshot tagged `pod=<code>` (the pod's repository holds only
that pod), then applies the retention and writes the metrics file. A restore fetches the
snapshot into a work directory, checks every requested kind for existing data (refusing
before changing anything unless `force`), then restores kind by kind.

Kinds are pluggable: anything satisfying `Kind` can be registered with `register_kind`
(the JetStream kind does so); its settings come from `spec.extra[<kind name>]`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from unityplan_infra.backup import files as files_kind
from unityplan_infra.backup import postgres as pg
from unityplan_infra.backup import redis as rd
from unityplan_infra.backup.errors import BackupError
from unityplan_infra.backup.metrics import RunMetrics, write_metrics
from unityplan_infra.backup.restic import (
    Credentials,
    Restic,
    Retention,
    S3Repository,
)

STAGE_MARKER = ".unityplan-backup-stage"
RUN_MANIFEST = "backup.json"
SPEC_VERSION = 1


# --- spec -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """A secret given inline, as a file (e.g. a Docker secret) or as an environment variable.

    JSON: {"value": "..."} | {"file": "/run/secrets/x"} | {"env": "NAME"}. The Pulumi program
    renders files or env names, so the spec file itself holds no secret.
    """

    value: str | None = None
    file: str | None = None
    env: str | None = None

    def __post_init__(self) -> None:
        given = [x for x in (self.value, self.file, self.env) if x is not None]
        if len(given) != 1:
            raise ValueError("a secret needs exactly one of value, file, env")

    def __repr__(self) -> str:
        if self.file is not None:
            return f"Secret(file={self.file!r})"
        if self.env is not None:
            return f"Secret(env={self.env!r})"
        return "Secret(value=***)"

    def reveal(self) -> str:
        if self.value is not None:
            return self.value
        if self.file is not None:
            try:
                return Path(self.file).read_text().rstrip("\r\n")
            except OSError as error:
                raise BackupError(f"cannot read the secret file {self.file}: {error}") from error
        assert self.env is not None
        if self.env not in os.environ:
            raise BackupError(f"the environment variable {self.env} (a secret) is not set")
        return os.environ[self.env]

    def to_json(self) -> dict[str, str]:
        for key in ("value", "file", "env"):
            item = getattr(self, key)
            if item is not None:
                return {key: item}
        raise AssertionError("unreachable")

    @classmethod
    def from_json(cls, data: Any, where: str) -> Secret:
        if isinstance(data, str):
            return cls(value=data)
        fields = _object(data, where, {"value", "file", "env"})
        try:
            return cls(**{k: _str(v, f"{where}.{k}") for k, v in fields.items()})
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error


@dataclass(frozen=True)
class ResticSpec:
    endpoint: str
    bucket: str
    path: str
    access_key_id: Secret
    secret_access_key: Secret
    password: Secret
    region: str = ""
    binary: str = "restic"
    cache_dir: str = ""
    timeout: float = 3600.0

    def client(self) -> Restic:
        """A Restic for this repository; a password file goes to restic as a file."""
        repository = S3Repository(self.endpoint, self.bucket, self.path, self.region)
        password_file = self.password.file
        credentials = Credentials(
            access_key_id=self.access_key_id.reveal(),
            secret_access_key=self.secret_access_key.reveal(),
            password=None if password_file is not None else self.password.reveal(),
            password_file=password_file,
        )
        return Restic(repository, credentials, binary=self.binary,
                      cache_dir=self.cache_dir or None, timeout=self.timeout)  # fmt: skip


@dataclass(frozen=True)
class PostgresSpec:
    host: str
    password: Secret
    port: int = 5432
    user: str = "postgres"
    maintenance_db: str = "postgres"
    exclude: tuple[str, ...] = ("postgres",)
    bin_dir: str = ""
    timeout: float = 3600.0

    def connection(self) -> pg.PgConnection:
        return pg.PgConnection(self.host, self.port, self.user, self.password.reveal(),
                               self.maintenance_db, self.bin_dir, self.timeout)  # fmt: skip


@dataclass(frozen=True)
class RedisSpec:
    host: str
    password: Secret
    port: int = 6379
    username: str = ""
    data_dir: str = ""  # the server's /data volume as mounted here; needed for restore only
    dbfilename: str = "dump.rdb"
    appenddirname: str = "appendonlydir"
    appendfilename: str = "appendonly.aof"
    timeout: float = 600.0

    def connection(self) -> rd.RedisConnection:
        return rd.RedisConnection(self.host, self.port, self.password.reveal(),
                                  self.username, self.timeout)  # fmt: skip

    def layout(self) -> rd.RedisLayout:
        if not self.data_dir:
            raise BackupError("redis.data_dir is not set: a restore writes the server's "
                              "files and needs its data volume mounted")  # fmt: skip
        return rd.RedisLayout(Path(self.data_dir), self.dbfilename, self.appenddirname,
                              self.appendfilename)  # fmt: skip


@dataclass(frozen=True)
class BackupSpec:
    """Everything one pod's backup needs; rendered as JSON by the Pulumi program."""

    pod: str
    restic: ResticSpec
    retention: Retention = field(default_factory=Retention)
    postgres: PostgresSpec | None = None
    redis: RedisSpec | None = None
    # Kind name -> entries, e.g. {"matrix": (media_store, signing.key)}.
    files: Mapping[str, tuple[files_kind.FileEntry, ...]] = field(default_factory=dict)
    metrics_dir: str = ""  # node-exporter's textfile directory; "" = no metrics
    extra: Mapping[str, Any] = field(default_factory=dict)  # settings of plugged-in kinds
    pod_name: str = ""  # the pod's name (the metrics' `pod` label); `pod` is its code

    def __post_init__(self) -> None:
        if not self.pod or not self.pod.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"pod code {self.pod!r} must be letters, digits, - or _")

    @property
    def tags(self) -> list[str]:
        return [f"pod={self.pod}"]

    @property
    def host(self) -> str:
        return f"unityplan-{self.pod}"

    @property
    def display_name(self) -> str:
        """`pod_name`, else `extra["pod_name"]` (where earlier specs kept it), else the code."""
        return self.pod_name or str(self.extra.get("pod_name") or "") or self.pod

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "version": SPEC_VERSION,
            "pod": self.pod,
            "restic": _dataclass_json(self.restic),
            "retention": _dataclass_json(self.retention),
        }
        if self.postgres is not None:
            data["postgres"] = _dataclass_json(self.postgres)
        if self.redis is not None:
            data["redis"] = _dataclass_json(self.redis)
        if self.files:
            data["files"] = {name: [_dataclass_json(e) for e in entries]
                             for name, entries in self.files.items()}  # fmt: skip
        if self.metrics_dir:
            data["metrics_dir"] = self.metrics_dir
        if self.extra:
            data["extra"] = dict(self.extra)
        if self.pod_name:
            data["pod_name"] = self.pod_name
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes | Mapping[str, Any]) -> BackupSpec:
        """Parse and validate; unknown keys are errors (a typo must not drop a setting)."""
        data = text if isinstance(text, Mapping) else json.loads(text)
        top = _object(data, "spec", {"version", "pod", "pod_name", "restic", "retention",
                                     "postgres", "redis", "files", "metrics_dir",
                                     "extra"})  # fmt: skip
        version = top.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise ValueError(f"spec version {version!r}: this program reads {SPEC_VERSION}")
        files = {
            name: tuple(_from_json(files_kind.FileEntry, e, f"files.{name}[{i}]")
                        for i, e in enumerate(_list(entries, f"files.{name}")))
            for name, entries in _object(top.get("files", {}), "files", None).items()
        }  # fmt: skip
        return cls(
            pod=_str(top.get("pod"), "pod"),
            restic=_from_json(ResticSpec, top.get("restic"), "restic"),
            retention=_from_json(Retention, top.get("retention", {}), "retention"),
            postgres=(_from_json(PostgresSpec, top["postgres"], "postgres")
                      if top.get("postgres") is not None else None),
            redis=(_from_json(RedisSpec, top["redis"], "redis")
                   if top.get("redis") is not None else None),
            files=files,
            metrics_dir=_str(top.get("metrics_dir", ""), "metrics_dir"),
            extra=dict(_object(top.get("extra", {}), "extra", None)),
            pod_name=_str(top.get("pod_name", ""), "pod_name"),
        )  # fmt: skip


# --- kinds ----------------------------------------------------------------------------


class Kind(Protocol):
    """One kind of data of a pod. `dump` fills `out_dir` (stage/<name>); `restore` reads it.

    `check_restore` runs for every requested kind before any `restore`; it raises
    RestoreRefused when the target holds data and not `force`, and must change nothing.
    """

    @property
    def name(self) -> str: ...

    def enabled(self, spec: BackupSpec) -> bool: ...

    def dump(self, spec: BackupSpec, out_dir: Path) -> None: ...

    def check_restore(self, spec: BackupSpec, in_dir: Path, *, force: bool) -> None: ...

    def restore(self, spec: BackupSpec, in_dir: Path, *, force: bool) -> None: ...


class PostgresKind:
    name = "postgres"

    def enabled(self, spec: BackupSpec) -> bool:
        return spec.postgres is not None

    def _spec(self, spec: BackupSpec) -> PostgresSpec:
        assert spec.postgres is not None
        return spec.postgres

    def dump(self, spec: BackupSpec, out_dir: Path) -> None:
        settings = self._spec(spec)
        pg.dump_all(settings.connection(), out_dir, settings.exclude)

    def check_restore(self, spec: BackupSpec, in_dir: Path, *, force: bool) -> None:
        names = [name for name, _ in pg.read_manifest(in_dir)]
        pg.check_restorable(self._spec(spec).connection(), names, force=force)

    def restore(self, spec: BackupSpec, in_dir: Path, *, force: bool) -> None:
        pg.restore_all(self._spec(spec).connection(), in_dir, force=force)


class RedisKind:
    name = "redis"
    file = "dump.rdb"

    def enabled(self, spec: BackupSpec) -> bool:
        return spec.redis is not None

    def _spec(self, spec: BackupSpec) -> RedisSpec:
        assert spec.redis is not None
        return spec.redis

    def dump(self, spec: BackupSpec, out_dir: Path) -> None:
        rd.snapshot(self._spec(spec).connection(), out_dir / self.file)

    def check_restore(self, spec: BackupSpec, in_dir: Path, *, force: bool) -> None:
        settings = self._spec(spec)
        connection = settings.connection()
        if rd.server_answers(connection):
            raise BackupError(f"Redis at {connection.host}:{connection.port} is running: "
                              "stop its container before restoring")  # fmt: skip
        rd.check_restorable(settings.layout(), force=force)

    def restore(self, spec: BackupSpec, in_dir: Path, *, force: bool) -> None:
        settings = self._spec(spec)
        rd.restore_files(in_dir / self.file, settings.layout(), force=force,
                         connection=settings.connection())  # fmt: skip


@dataclass(frozen=True)
class FilesKind:
    """Plain files under a kind name; entries from `spec.files[name]`."""

    name: str

    def enabled(self, spec: BackupSpec) -> bool:
        return bool(spec.files.get(self.name))

    def dump(self, spec: BackupSpec, out_dir: Path) -> None:
        files_kind.stage(spec.files[self.name], out_dir)

    def check_restore(self, spec: BackupSpec, in_dir: Path, *, force: bool) -> None:
        files_kind.check_restorable(spec.files[self.name], in_dir, force=force)

    def restore(self, spec: BackupSpec, in_dir: Path, *, force: bool) -> None:
        files_kind.restore(spec.files[self.name], in_dir, force=force)


_KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind, *, replace: bool = False) -> None:
    """Add a kind; runs and restores go in registration order."""
    if not kind.name or "/" in kind.name or kind.name.startswith("."):
        raise ValueError(f"kind name {kind.name!r} must be a plain directory name")
    if kind.name in _KINDS and not replace:
        raise ValueError(f"a kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind


def registered_kinds() -> dict[str, Kind]:
    return dict(_KINDS)


def kinds_of(spec: BackupSpec, kinds: Mapping[str, Kind] | None = None) -> dict[str, Kind]:
    """`kinds` (default: the registered ones) plus a FilesKind for every `spec.files` name
    without a kind: a files entry in the spec is never skipped for want of registration."""
    available = registered_kinds() if kinds is None else dict(kinds)
    for name in spec.files:
        available.setdefault(name, FilesKind(name))
    return available


for _kind in (PostgresKind(), RedisKind(), FilesKind("matrix")):
    register_kind(_kind)


# --- runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    pod: str
    snapshot_id: str
    kinds: tuple[str, ...]
    started: float  # Unix time
    duration_seconds: float
    added_bytes: int  # restic data_added: new to the repository
    processed_bytes: int  # restic total_bytes_processed: read from the staging directory
    added_chunks: int  # restic data_blobs: new data chunks stored
    snapshots_kept: int
    snapshots_removed: int
    repository_created: bool
    metrics_file: str  # "" without metrics_dir


@dataclass(frozen=True)
class RestoreResult:
    pod: str
    snapshot_id: str
    kinds: tuple[str, ...]
    duration_seconds: float


def backup_pod(
    spec: BackupSpec,
    stage_dir: Path,
    *,
    kinds: Mapping[str, Kind] | None = None,
    snapshot_time: datetime | None = None,
) -> RunResult:
    """One backup run of `spec.pod`; writes metrics whether it succeeds or fails.

    The repository is opened first (and initialised only if it does not exist yet), so a
    wrong password or an unreachable store fails before minutes of dumping. The staging
    directory is emptied before and after: the dumps in it are not encrypted.
    `snapshot_time` backdates the snapshot (restic --time), for tests of the retention.
    """
    available = kinds_of(spec, kinds)
    started = time.time()
    clock = time.monotonic()
    try:
        restic = spec.restic.client()
        created = restic.init_if_missing()
        _prepare_stage(stage_dir)
        try:
            ran = [kind for kind in available.values() if kind.enabled(spec)]
            if not ran:
                raise BackupError(f"nothing to back up for pod {spec.pod}: no kind configured")
            for kind in ran:
                kind.dump(spec, stage_dir / kind.name)
            manifest = {"pod": spec.pod, "kinds": [k.name for k in ran],
                        "created": datetime.now(UTC).isoformat()}  # fmt: skip
            (stage_dir / RUN_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            summary = restic.backup(stage_dir, tags=spec.tags, host=spec.host,
                                    time=snapshot_time)  # fmt: skip
        finally:
            _clear_stage(stage_dir)
        forgotten = restic.forget(spec.retention, tags=spec.tags)
        if forgotten.removed:  # prune is the expensive part: only when there is garbage
            restic.prune()
    except BaseException:
        if spec.metrics_dir:
            write_metrics(Path(spec.metrics_dir), RunMetrics(
                spec.pod, time.time(), time.monotonic() - clock, success=False,
                pod_name=spec.display_name))  # fmt: skip
        raise
    duration = time.monotonic() - clock
    metrics_file = ""
    if spec.metrics_dir:
        metrics_file = str(write_metrics(Path(spec.metrics_dir), RunMetrics(
            spec.pod, time.time(), duration, success=True, added_bytes=summary.data_added,
            processed_bytes=summary.total_bytes_processed,
            snapshots=len(forgotten.kept), pod_name=spec.display_name)))  # fmt: skip
    return RunResult(
        pod=spec.pod, snapshot_id=summary.snapshot_id, kinds=tuple(k.name for k in ran),
        started=started, duration_seconds=duration, added_bytes=summary.data_added,
        processed_bytes=summary.total_bytes_processed, added_chunks=summary.data_blobs,
        snapshots_kept=len(forgotten.kept),
        snapshots_removed=len(forgotten.removed), repository_created=created,
        metrics_file=metrics_file,
    )  # fmt: skip


def restore_pod(
    spec: BackupSpec,
    snapshot: str = "latest",
    what: Iterable[str] | None = None,
    force: bool = False,
    *,
    work_dir: Path | None = None,
    kinds: Mapping[str, Kind] | None = None,
) -> RestoreResult:
    """Put a snapshot's data back: every kind it holds, or those in `what`.

    Nothing of the pod changes before every requested kind passed its check: a refusal
    (RestoreRefused) or a repository error leaves all data as it was. Services must be
    stopped where a kind needs it (Redis); PostgreSQL sessions are terminated.
    """
    available = kinds_of(spec, kinds)
    clock = time.monotonic()
    restic = spec.restic.client()
    restic.check_bucket()
    chosen = _snapshot_id(restic, spec, snapshot)  # a missing repository fails here
    scratch = Path(tempfile.mkdtemp(prefix="unityplan-restore-", dir=work_dir))
    try:
        os.chmod(scratch, 0o700)  # the restored dumps are plaintext
        requested = None if what is None else sorted(set(what))
        patterns = [f"/{RUN_MANIFEST}"] + [f"/{name}" for name in requested or []]
        restic.restore(scratch, snapshot=chosen, include=patterns if requested else ())
        manifest = _read_run_manifest(scratch)
        if manifest.get("pod") != spec.pod:
            raise BackupError(f"snapshot {chosen} is of pod {manifest.get('pod')!r}, "
                              f"not {spec.pod!r}: wrong repository?")  # fmt: skip
        present = [str(k) for k in manifest.get("kinds", [])]
        names = present if requested is None else requested
        missing = [n for n in names if n not in present]
        if missing:
            raise BackupError(f"snapshot {chosen} holds no {', '.join(missing)} "
                              f"(it holds {', '.join(present) or 'nothing'})")  # fmt: skip
        unknown = [n for n in names if n not in available or not available[n].enabled(spec)]
        if unknown:
            raise BackupError(f"cannot restore {', '.join(unknown)}: not configured for "
                              f"pod {spec.pod}")  # fmt: skip
        ordered = [available[n] for n in available if n in names]
        for kind in ordered:  # every check before any change
            kind.check_restore(spec, scratch / kind.name, force=force)
        for kind in ordered:
            kind.restore(spec, scratch / kind.name, force=force)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return RestoreResult(spec.pod, chosen, tuple(k.name for k in ordered),
                         time.monotonic() - clock)  # fmt: skip


# --- helpers --------------------------------------------------------------------------


def _snapshot_id(restic: Restic, spec: BackupSpec, snapshot: str) -> str:
    """The full ID of `snapshot` ("latest" or an ID prefix) among the pod's snapshots."""
    snapshots = restic.snapshots(tags=spec.tags)
    if not snapshots:
        raise BackupError(f"the repository of pod {spec.pod} holds no snapshot of it")
    if snapshot == "latest":
        return snapshots[-1].id
    matches = [s.id for s in snapshots if s.id.startswith(snapshot)]
    if len(matches) != 1:
        raise BackupError(f"snapshot {snapshot!r}: {len(matches)} snapshots of pod "
                          f"{spec.pod} match (IDs: `restic snapshots`)")  # fmt: skip
    return matches[0]


def _prepare_stage(stage_dir: Path) -> None:
    """Empty the staging directory, refusing one this program did not create."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    marker = stage_dir / STAGE_MARKER
    if any(stage_dir.iterdir()) and not marker.exists():
        raise BackupError(f"staging directory {stage_dir} is not empty and not one of ours "
                          f"(no {STAGE_MARKER}): refusing to empty it")  # fmt: skip
    _clear_stage(stage_dir)
    marker.touch()
    os.chmod(stage_dir, 0o700)


def _clear_stage(stage_dir: Path) -> None:
    for path in stage_dir.iterdir():
        if path.name == STAGE_MARKER:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _read_run_manifest(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((root / RUN_MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise BackupError(f"the snapshot has no readable {RUN_MANIFEST}: not made by "
                          f"this program? ({error})") from error  # fmt: skip
    if not isinstance(data, dict):
        raise BackupError(f"{RUN_MANIFEST} of the snapshot is not an object")
    return data


def _dataclass_json(item: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in item.__dataclass_fields__:
        value = getattr(item, name)
        if isinstance(value, Secret):
            out[name] = value.to_json()
        elif isinstance(value, tuple):
            out[name] = list(value)
        else:
            out[name] = value
    return out


def _from_json(cls: Any, data: Any, where: str) -> Any:
    """A dataclass from a JSON object: known keys only, types checked against defaults."""
    fields = cls.__dataclass_fields__
    values = _object(data, where, set(fields))
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        annotation = str(fields[name].type)
        if annotation == "Secret":
            kwargs[name] = Secret.from_json(value, f"{where}.{name}")
        elif annotation.startswith("tuple"):
            kwargs[name] = tuple(_str(v, f"{where}.{name}[]") for v in _list(value, where))
        elif annotation == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{where}.{name} must be an integer")
            kwargs[name] = value
        elif annotation == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{where}.{name} must be a number")
            kwargs[name] = float(value)
        elif annotation == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{name} must be true or false")
            kwargs[name] = value
        else:
            kwargs[name] = _str(value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error


def _object(data: Any, where: str, allowed: set[str] | None) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a JSON object")
    if allowed is not None:
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    return dict(data)


def _list(data: Any, where: str) -> Sequence[Any]:
    if not isinstance(data, list):
        raise ValueError(f"{where} must be a JSON array")
    return data


def _str(data: Any, where: str) -> str:
    if not isinstance(data, str):
        raise ValueError(f"{where} must be a string")
    return data
