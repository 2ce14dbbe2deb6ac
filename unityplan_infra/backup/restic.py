"""A typed wrapper around the `restic` binary for one S3-compatible repository.

Run against restic 0.14 (Debian bookworm), which exits 1 for every fatal error; restic 0.17
added distinct exit codes (10 no repository, 11 locked, 12 wrong password, per its scripting
docs). `classify` takes either: the codes of 0.17+, else restic's stderr text (as 0.14 prints
it; newer releases are not tested here). Before restic runs at all, a signed HEAD on the
bucket tells "unreachable", "no such bucket" and "access denied" apart in seconds.

Secrets never reach argv: the repository password goes through RESTIC_PASSWORD_FILE (restic
reads the file itself) or RESTIC_PASSWORD, the S3 keys through AWS_ACCESS_KEY_ID/SECRET.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from unityplan_infra.backup.errors import BackupError

# restic's documented exit codes (075_scripting "Exit codes"); 10-12 since 0.17.
EXIT_OK = 0
EXIT_FATAL = 1
EXIT_GO_RUNTIME = 2
EXIT_INCOMPLETE = 3  # backup: some source files could not be read
EXIT_NO_REPOSITORY = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12
EXIT_INTERRUPTED = 130

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Seconds restic gets to remove its lock after SIGINT before it is killed.
_INTERRUPT_GRACE = 15.0


class RepositoryMissing(BackupError):
    """The bucket exists but holds no repository at the path (restic 0.17+: exit 10)."""


class WrongPassword(BackupError):
    """The repository exists; the password opens none of its keys."""


class BucketMissing(BackupError):
    """The bucket does not exist at the endpoint."""


class EndpointUnreachable(BackupError):
    """Nothing answered at the endpoint (DNS, refused, timeout, TLS)."""


class AccessDenied(BackupError):
    """The object store refused the access key."""


class RepositoryLocked(BackupError):
    """Another run holds the repository's lock."""


@dataclass(frozen=True)
class S3Repository:
    """Where a repository lives: `s3:<endpoint>/<bucket>/<path>`."""

    endpoint: str  # scheme and host[:port], e.g. "https://fsn1.your-objectstorage.com"
    bucket: str
    path: str  # inside the bucket, e.g. "unityplan/dk": one repository per pod
    region: str = ""  # AWS_DEFAULT_REGION; most non-AWS stores ignore it

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"S3 endpoint {self.endpoint!r} must be http(s)://host[:port]")
        if parts.path.strip("/") or parts.query:
            raise ValueError(f"S3 endpoint {self.endpoint!r} must not carry a path; "
                             "put the bucket and the path in their own fields")  # fmt: skip
        if not _BUCKET.match(self.bucket):
            raise ValueError(f"S3 bucket name {self.bucket!r} is not valid")
        segments = self.path.strip("/").split("/")
        if not self.path.strip("/") or any(s in ("", ".", "..") for s in segments):
            raise ValueError(f"repository path {self.path!r} must be a/b/c inside the bucket")

    @property
    def url(self) -> str:
        return f"s3:{self.endpoint.rstrip('/')}/{self.bucket}/{self.path.strip('/')}"

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.endpoint)
        assert parts.hostname is not None  # checked in __post_init__
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True)
class Credentials:
    """Resolved secrets. Exactly one of `password` and `password_file`."""

    access_key_id: str
    secret_access_key: str
    password: str | None = None
    password_file: str | None = None

    def __post_init__(self) -> None:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of the repository password and its file")
        if self.password == "":
            raise ValueError("the repository password must not be empty")

    def __repr__(self) -> str:  # keeps secrets out of tracebacks and logs
        return f"Credentials(access_key_id=***, password_file={self.password_file!r})"


@dataclass(frozen=True)
class Retention:
    """restic forget's --keep-daily/--keep-weekly/--keep-monthly (0: that rule is off)."""

    daily: int = 7
    weekly: int = 4
    monthly: int = 6

    def __post_init__(self) -> None:
        values = (self.daily, self.weekly, self.monthly)
        if any(v < 0 for v in values) or not any(values):
            # All zero would make `forget` refuse (0.14) or delete every snapshot.
            raise ValueError(f"retention must keep something: {self}")

    def args(self) -> list[str]:
        pairs = (("--keep-daily", self.daily), ("--keep-weekly", self.weekly),
                 ("--keep-monthly", self.monthly))  # fmt: skip
        return [item for flag, n in pairs if n for item in (flag, str(n))]


@dataclass(frozen=True)
class Snapshot:
    id: str
    short_id: str
    time: datetime
    hostname: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Snapshot:
        return cls(
            id=str(data["id"]),
            short_id=str(data.get("short_id", str(data["id"])[:8])),
            time=parse_time(str(data["time"])),
            hostname=str(data.get("hostname", "")),
            paths=tuple(str(p) for p in data.get("paths") or ()),
            tags=tuple(str(t) for t in data.get("tags") or ()),
        )


@dataclass(frozen=True)
class BackupSummary:
    """The `summary` message of `restic backup --json`."""

    snapshot_id: str
    data_added: int  # bytes new to the repository (before compression in 0.14's format 1)
    total_bytes_processed: int  # bytes read from the source
    data_blobs: int  # new data chunks stored
    files_new: int
    files_changed: int
    files_unmodified: int
    duration_seconds: float


@dataclass(frozen=True)
class ForgetResult:
    kept: tuple[Snapshot, ...]
    removed: tuple[Snapshot, ...]


def parse_time(text: str) -> datetime:
    """restic's RFC 3339 time with nanoseconds (Python takes at most microseconds)."""
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not match:
        raise BackupError(f"restic printed a time this program cannot read: {text!r}")
    base, fraction, zone = match.groups()
    micro = (fraction or ".0")[1:7].ljust(6, "0")
    parsed = datetime.fromisoformat(f"{base}.{micro}{'+00:00' if zone == 'Z' else zone}")
    return parsed.astimezone(UTC)


class Restic:
    """restic commands against one repository, each bounded by a timeout."""

    def __init__(
        self,
        repository: S3Repository,
        credentials: Credentials,
        *,
        binary: str = "restic",
        cache_dir: str | None = None,
        timeout: float = 3600.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.repository = repository
        self.credentials = credentials
        self.binary = binary
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.connect_timeout = connect_timeout

    # --- plumbing ---------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The process environment minus inherited RESTIC_*/AWS_* plus this repository's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "AWS_"))}
        env["AWS_ACCESS_KEY_ID"] = self.credentials.access_key_id
        env["AWS_SECRET_ACCESS_KEY"] = self.credentials.secret_access_key
        if self.repository.region:
            env["AWS_DEFAULT_REGION"] = self.repository.region
        if self.credentials.password_file is not None:
            env["RESTIC_PASSWORD_FILE"] = self.credentials.password_file
        else:
            assert self.credentials.password is not None
            env["RESTIC_PASSWORD"] = self.credentials.password
        if self.cache_dir:
            env["RESTIC_CACHE_DIR"] = self.cache_dir
        return env

    def argv(self, *args: str) -> list[str]:
        cache = [] if self.cache_dir else ["--no-cache"]
        return [self.binary, "-r", self.repository.url, *cache, *args]

    def run(
        self, *args: str, cwd: Path | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run one restic command; a failure becomes a classified BackupError.

        On a lock error, stale locks are removed and the command runs once more: a run
        killed without SIGINT leaves its lock behind, and every later run would fail on it.
        """
        try:
            return self._run_once(*args, cwd=cwd, timeout=timeout)
        except RepositoryLocked:
            if args[0] in ("unlock", "init"):
                raise
            self.unlock_stale()
            return self._run_once(*args, cwd=cwd, timeout=timeout)

    def _run_once(
        self, *args: str, cwd: Path | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        limit = self.timeout if timeout is None else timeout
        command = self.argv(*args)
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, env=self.environment(), cwd=cwd,
            )  # fmt: skip
        except FileNotFoundError as error:
            raise BackupError(f"restic binary {self.binary!r} not found: install restic "
                              "(Debian package `restic`) or set its path") from error  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            stderr = _interrupt(process)
            raise BackupError(
                f"restic {args[0]} on {self.repository.url} did not finish in {limit:.0f}s "
                f"(stopped it): the endpoint may be unreachable or too slow. {_tail(stderr)}"
            ) from None
        if process.returncode != EXIT_OK:
            raise classify(args[0], process.returncode, stderr, self.repository)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

    def check_bucket(self) -> None:
        """Fail fast and clearly unless the bucket answers a signed HEAD with 200.

        restic cannot be asked this: with a region set, its S3 client (0.14, measured against
        moto) reports a missing bucket as a missing config file, and `restic init` would then
        create the bucket, whose placement and policy are the operator's choice. restic also
        retries failing backend requests with backoff; this request has its own short timeout.
        """
        repository = self.repository
        url = f"{repository.endpoint.rstrip('/')}/{repository.bucket}"
        headers = sigv4_headers(
            "HEAD", url, region=repository.region or "us-east-1",
            access_key_id=self.credentials.access_key_id,
            secret_access_key=self.credentials.secret_access_key,
            now=datetime.now(UTC),
        )  # fmt: skip
        request = urllib.request.Request(url, method="HEAD", headers=headers)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=self.connect_timeout):
                return
        except urllib.error.HTTPError as error:
            status = error.code
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise EndpointUnreachable(
                f"cannot reach the S3 endpoint {repository.endpoint}: {reason}. Check the "
                "endpoint URL in the backup config, that the object store is up, and that "
                "this host may reach it (DNS, firewall, TLS certificate)."
            ) from error
        if status == 404:
            raise BucketMissing(
                f"the bucket {repository.bucket!r} does not exist at {repository.endpoint}: "
                "create it in the object store (the backup does not create buckets) or fix "
                "the bucket name in the backup config."
            )
        if status == 403:
            raise AccessDenied(
                f"the object store at {repository.endpoint} refused the access key for "
                f"bucket {repository.bucket!r} (HTTP 403): check the access key ID and secret, "
                "the key's permissions on the bucket, and this host's clock (signatures "
                "expire after 15 minutes)."
            )
        raise BackupError(
            f"the object store at {repository.endpoint} answered HTTP {status} for bucket "
            f"{repository.bucket!r}: if the bucket lives in another region, set the region "
            f"(now {repository.region or 'unset, signed as us-east-1'!r})."
        )

    # --- repository -------------------------------------------------------------------

    def exists(self) -> bool:
        """True when the repository is initialised; False only when its config is absent.

        Any other failure (wrong password, missing bucket, unreachable) raises: deciding
        "absent" from an ambiguous error would re-initialise over an existing repository.
        """
        self.check_bucket()
        try:
            self.run("cat", "config", timeout=min(self.timeout, 120.0))
        except RepositoryMissing:
            return False
        return True

    def init_if_missing(self) -> bool:
        """Initialise the repository unless it exists; True when it was created now."""
        if self.exists():
            return False
        self.run("init")
        return True

    def unlock_stale(self) -> None:
        """Remove the locks of runs that died: restic's plain `unlock` removes only stale
        locks (its process gone on this host, or older than 30 minutes)."""
        self._run_once("unlock", timeout=min(self.timeout, 120.0))

    # --- data -------------------------------------------------------------------------

    def backup(
        self,
        directory: Path,
        *,
        tags: Sequence[str],
        host: str,
        time: datetime | None = None,
    ) -> BackupSummary:
        """One snapshot of `directory`'s contents, stored at the snapshot's root.

        Run as `restic backup .` from inside the directory: restic then keeps the files
        directly at the snapshot root (not under the directory's name), so the layout does
        not depend on where the staging directory lives. `host` is fixed (not the container's
        random hostname) so restic finds the parent snapshot and skips unchanged files.
        """
        args = ["backup", "--json", "--host", host]
        for tag in tags:
            args += ["--tag", tag]
        if time is not None:
            args += ["--time", time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")]
        result = self.run(*args, ".", cwd=directory)
        summary = _summary(result.stdout)
        if summary is None:
            raise BackupError(f"restic backup printed no summary: {_tail(result.stdout)}")
        return summary

    def snapshots(self, *, tags: Sequence[str] = ()) -> list[Snapshot]:
        """Snapshots (all tags given must match), oldest first."""
        args = ["snapshots", "--json"]
        if tags:
            args += ["--tag", ",".join(tags)]
        data = _json(self.run(*args, timeout=min(self.timeout, 300.0)).stdout, "snapshots")
        items = [Snapshot.from_json(item) for item in data or []]
        return sorted(items, key=lambda s: s.time)

    def restore(
        self,
        target: Path,
        *,
        snapshot: str = "latest",
        tags: Sequence[str] = (),
        include: Sequence[str] = (),
    ) -> None:
        """Restore `snapshot` ("latest" among those with `tags`, or an ID) into `target`.

        `include`: restic patterns (snapshot paths such as "/postgres") to restore only.
        """
        args = ["restore", snapshot, "--target", str(target)]
        if tags:
            args += ["--tag", ",".join(tags)]
        for pattern in include:
            args += ["--include", pattern]
        self.run(*args)

    def forget(self, retention: Retention, *, tags: Sequence[str]) -> ForgetResult:
        """Apply `retention` to the snapshots with `tags`, grouped by tags only.

        Grouping by tags (not restic's default host+paths) keeps one pod's snapshots in one
        group even when the staging path or host name changed between runs, so the keep
        rules count every snapshot of the pod once.
        """
        args = ["forget", "--json", "--group-by", "tags", *retention.args()]
        if tags:
            args += ["--tag", ",".join(tags)]
        groups = _json(self.run(*args, timeout=min(self.timeout, 600.0)).stdout, "forget")
        kept: list[Snapshot] = []
        removed: list[Snapshot] = []
        for group in groups or []:
            kept += [Snapshot.from_json(s) for s in group.get("keep") or []]
            removed += [Snapshot.from_json(s) for s in group.get("remove") or []]
        return ForgetResult(tuple(kept), tuple(removed))

    def prune(self) -> None:
        """Delete data no snapshot references any more (separate from `forget --json`,
        whose JSON prune's text output would corrupt)."""
        self.run("prune")


# --- classification -----------------------------------------------------------------


_UNREACHABLE = ("dial tcp", "connection refused", "no such host", "i/o timeout",
                "network is unreachable", "context deadline exceeded", "tls: ",
                "connection reset by peer", "server misbehaving")  # fmt: skip
_DENIED = ("access denied", "invalidaccesskeyid", "signaturedoesnotmatch",
           "the access key id you provided does not exist", "forbidden")  # fmt: skip


def classify(command: str, returncode: int, stderr: str, repository: S3Repository) -> BackupError:
    """A restic failure as an error that names what failed and how to fix it."""
    text = stderr.lower()
    where = repository.url
    tail = _tail(stderr)
    if returncode == EXIT_WRONG_PASSWORD or "wrong password" in text:
        return WrongPassword(
            f"wrong password for the restic repository {where}: it exists, but the password "
            "opens none of its keys. Give the password it was initialised with (the pod's "
            "generated backup password); do not initialise it again."
        )
    if "bucket does not exist" in text or "nosuchbucket" in text:
        return BucketMissing(
            f"the bucket {repository.bucket!r} does not exist at {repository.endpoint}: "
            "create it in the object store (restic is not allowed to create it) or fix "
            f"the bucket name in the backup config. {tail}"
        )
    if any(marker in text for marker in _DENIED):
        return AccessDenied(
            f"the object store at {repository.endpoint} refused the access key for bucket "
            f"{repository.bucket!r}: check the access key ID and secret and the key's "
            f"permissions on the bucket. {tail}"
        )
    if any(marker in text for marker in _UNREACHABLE):
        return EndpointUnreachable(
            f"cannot reach the S3 endpoint {repository.endpoint} (restic {command}): check "
            f"the endpoint URL, that the object store is up and reachable. {tail}"
        )
    if returncode == EXIT_NO_REPOSITORY or (
        "unable to open config file" in text
        and ("does not exist" in text or "no such file" in text)
    ):
        return RepositoryMissing(
            f"no restic repository at {where}: the first backup run initialises it. {tail}"
        )
    if returncode == EXIT_LOCKED or "repository is already locked" in text:
        return RepositoryLocked(
            f"the restic repository {where} is locked by another run (backup, prune or a "
            f"manual command). Wait for it; if none runs, `restic unlock` removes the lock "
            f"of a run that died. {tail}"
        )
    if returncode == EXIT_INCOMPLETE:
        return BackupError(
            f"restic {command} could not read some files of the staging directory, so the "
            f"snapshot is incomplete: check the permissions of the dump files. {tail}"
        )
    if returncode == EXIT_INTERRUPTED:
        return BackupError(f"restic {command} was interrupted. {tail}")
    return BackupError(f"restic {command} on {where} failed (exit {returncode}). {tail}")


# --- helpers --------------------------------------------------------------------------


def sigv4_headers(
    method: str,
    url: str,
    *,
    region: str,
    access_key_id: str,
    secret_access_key: str,
    now: datetime,
) -> dict[str, str]:
    """AWS Signature Version 4 headers for a request without a body (stdlib only: this
    runs in the backup zipapp, which carries no AWS SDK)."""
    parts = urlsplit(url)
    if parts.query or parts.username:
        raise ValueError("sigv4_headers signs plain URLs only (no query, no user info)")
    # The Host header urllib sends is the URL's netloc verbatim: sign exactly that.
    amz_date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload = hashlib.sha256(b"").hexdigest()
    signed = "host;x-amz-content-sha256;x-amz-date"
    canonical = "\n".join([
        method, parts.path or "/", "",
        f"host:{parts.netloc}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n",
        signed, payload,
    ])  # fmt: skip
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])  # fmt: skip
    key = ("AWS4" + secret_access_key).encode()
    for item in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, item.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}",
    }


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect (another region) is reported, not followed unsigned."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _interrupt(process: subprocess.Popen[str]) -> str:
    """SIGINT first (restic removes its lock), then kill; returns what stderr had."""
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=_INTERRUPT_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return stderr or ""


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return ("restic said: " + " | ".join(kept)) if kept else ""


def _json(stdout: str, what: str) -> Any:
    try:
        return json.loads(stdout or "null")
    except json.JSONDecodeError as error:
        raise BackupError(f"restic {what} printed no JSON: {_tail(stdout)}") from error


def _summary(stdout: str) -> BackupSummary | None:
    """The last `summary` line of `backup --json` (status lines come before it)."""
    for line in reversed(stdout.splitlines()):
        if '"summary"' not in line:
            continue
        data = json.loads(line)
        if data.get("message_type") != "summary":
            continue
        return BackupSummary(
            snapshot_id=str(data.get("snapshot_id", "")),
            data_added=int(data.get("data_added", 0)),
            total_bytes_processed=int(data.get("total_bytes_processed", 0)),
            data_blobs=int(data.get("data_blobs", 0)),
            files_new=int(data.get("files_new", 0)),
            files_changed=int(data.get("files_changed", 0)),
            files_unmodified=int(data.get("files_unmodified", 0)),
            duration_seconds=float(data.get("total_duration", 0.0)),
        )
    return None
