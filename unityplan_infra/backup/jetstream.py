"""JetStream streams backed up through the server's own snapshot and restore API.

Why this API and not a consumer that reads every message: the snapshot is the stream's
store itself (message blocks plus the stream's index, s2-compressed tar) as the stream
leader holds it, so a restore brings back every message with its original sequence number,
timestamp and headers, the gaps left by deleted messages, and the stream config.

nats-py (2.16) has no snapshot/restore, so the protocol is implemented here the way
nats-io/jsm.go (snapshots.go, used by `nats stream backup|restore`) speaks it to
nats-server 2.10 (server/jetstream_api.go: jsStreamSnapshotRequest, streamSnapshot,
jsStreamRestoreRequest, processStreamRestore):

Snapshot: subscribe to an inbox, then request `$JS.API.STREAM.SNAPSHOT.<stream>` with
{"deliver_subject": inbox, "chunk_size", "no_consumers", "jsck"}. The reply carries the
stream's config and state as of the snapshot; the chunks arrive on the inbox, each with a
reply subject that acknowledges it (flow control: with more than 8 MiB unacknowledged the
server waits at most 2 s, then ends with `408 No Flow Response`). The end is a message
without payload: header status 204 on success, 408 and a description otherwise.

Restore: request `$JS.API.STREAM.RESTORE.<stream>` with {"config", "state"}; the reply names
a deliver subject. Each chunk goes there as a request (empty reply: stored; `-ERR ...` or an
API error: failed); the server gives up after 5 s without a chunk. An empty request ends the
transfer and its reply is a stream create response (the restored stream's info) or an error.

Files in the backup directory are laid out as `nats stream backup` writes them
(`stream.tar.s2`, `backup.json` with "config" and "state"), plus the archive's size and
SHA-256 in backup.json so a damaged copy is refused before anything is deleted.

This module runs inside the backup container (zipapp): standard library and nats-py only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from unityplan_infra.backup.errors import BackupError, RestoreRefused

API = "$JS.API"
ARCHIVE_NAME = "stream.tar.s2"
METADATA_NAME = "backup.json"
FORMAT = "unityplan-jetstream-backup/1"

DEFAULT_CHUNK_SIZE = 128 * 1024  # the server's own default
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 1024 * 1024  # the server's default max_payload
RESTORE_CHUNK_SIZE = 64 * 1024  # as jsm.go sends them
RESPONDER_WAIT = 2.0  # s a restore chunk is resent while its subscription is on its way

# JetStream API error codes (server/errors.json) this module reacts to.
STREAM_NOT_FOUND = 10059
STREAM_NAME_EXISTS_RESTORE = 10130

# What to do about a failed restore, by err_code.
_RESTORE_HINTS = {
    10005: " No server matches the stream's placement tags or replica count: start the"
    " servers it needs (the pod's own for a territory stream), then retry.",
}

# A stream name is one subject token: no dots, wildcards, whitespace or path separators.
_STREAM_NAME = re.compile(r"^[^.*>\s/\\]+$")


def nats_server_name(pod_code: str) -> str:
    """The NATS server name of a pod's server.

    Mirrors `PodPlan.nats_server_name` (unityplan_infra/topology/plan.py: the container
    name `service-nats-<code>`, rendered as `server_name` by render/nats.py), which this
    module cannot import inside the backup container; a unit test pins the two together.
    """
    return f"service-nats-{pod_code}"


@dataclass(frozen=True)
class SnapshotInfo:
    """What `snapshot_stream` wrote."""

    stream: str
    archive: Path  # the server's snapshot, s2-compressed tar, as received
    metadata: Path  # backup.json: stream config and state, archive size and SHA-256
    bytes: int
    sha256: str
    chunks: int
    messages: int  # stream state at the snapshot: what a restore brings back
    first_seq: int
    last_seq: int
    seconds: float


@dataclass(frozen=True)
class RestoreInfo:
    """What `restore_stream` did."""

    stream: str
    replaced: bool  # an existing (empty, or with `force` any) stream was deleted first
    bytes: int
    messages: int  # state of the restored stream as its leader reported it
    first_seq: int
    last_seq: int
    replicas_current: int  # replicas (leader included) current when the restore returned
    seconds: float


class StreamListing(NamedTuple):
    """`$JS.API.STREAM.LIST`: stream infos, and the names of streams that did not answer
    (their servers are down), so a caller decides instead of silently skipping them."""

    streams: list[dict[str, Any]]
    missing: list[str]


class _ApiError(BackupError):
    """The JetStream API answered with an error."""

    def __init__(self, what: str, error: Mapping[str, Any]) -> None:
        self.code = int(error.get("code") or 0)
        self.err_code = int(error.get("err_code") or 0)
        self.description = str(error.get("description") or "no description")
        super().__init__(f"{what}: {self.description} (code {self.code}, err_code {self.err_code})")


# --- connection and API -------------------------------------------------------------------
async def connect(
    url: str, *, user: str | None = None, password: str | None = None, timeout: float = 5.0
) -> Client:
    """Connect to one NATS server, or raise a BackupError that names it and the cause."""
    errors: list[Exception] = []

    async def remember(error: Exception) -> None:
        # Instead of nats-py's own logging: the cause goes into the BackupError.
        errors.append(error)

    try:
        # nats-py retries a refused first connect forever with max_reconnect_attempts=0:
        # one retry (1), right away, and an overall bound.
        return await asyncio.wait_for(
            nats.connect(
                url, user=user, password=password, connect_timeout=max(1, round(timeout)),
                allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0,
                error_cb=remember,
            ),
            timeout=2 * timeout + 1,
        )  # fmt: skip
    except Exception as error:  # nats-py raises several unrelated types here
        cause = errors[-1] if errors else error
        raise BackupError(
            f"cannot connect to NATS at {url} as {user or 'anonymous'}: {cause!r}. Check that"
            " the pod's nats-server runs and listens there, and the client user and password"
        ) from error


async def _request(
    nc: Client, subject: str, payload: bytes, *, timeout: float, what: str,
    wait_for_responder: float = 0.0,
) -> Msg:  # fmt: skip
    """One request. `wait_for_responder`: how long to resend while nobody listens yet. Safe
    only where the reply's subscription may still be on its way to this server (a restore's
    deliver subject, created on the stream's leader): "no responders" means not delivered."""
    deadline = time.monotonic() + wait_for_responder
    try:
        while True:
            try:
                return await nc.request(subject, payload, timeout=timeout)
            except nats.errors.NoRespondersError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)
    except nats.errors.NoRespondersError as error:
        raise BackupError(
            f"{what}: nobody answers {subject}. Is JetStream enabled on the server and for"
            " this account?"
        ) from error
    except nats.errors.TimeoutError as error:
        raise BackupError(
            f"{what}: no answer to {subject} within {timeout}s. JetStream may have no leader"
            " for it (servers down, an election under way): check `nats server report"
            " jetstream` / the monitoring /jsz endpoint, then retry"
        ) from error
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError) as error:
        raise BackupError(f"{what}: the NATS connection is closed; reconnect and retry") from error


async def _api(
    nc: Client, subject: str, body: Mapping[str, Any] | None, *, timeout: float, what: str
) -> dict[str, Any]:
    payload = json.dumps(body).encode() if body is not None else b""
    reply = await _request(nc, f"{API}.{subject}", payload, timeout=timeout, what=what)
    try:
        result = json.loads(reply.data)
    except ValueError as error:
        raise BackupError(f"{what}: the server sent no JSON: {reply.data[:200]!r}") from error
    if not isinstance(result, dict):
        raise BackupError(f"{what}: unexpected reply {result!r}")
    if isinstance(result.get("error"), dict):
        raise _ApiError(what, result["error"])
    return result


def _check_name(stream: str) -> None:
    if not _STREAM_NAME.match(stream):
        raise BackupError(f"{stream!r} is not a JetStream stream name")


async def stream_info(nc: Client, stream: str, *, timeout: float = 5.0) -> dict[str, Any] | None:
    """The stream's info ($JS.API.STREAM.INFO), or None if there is no such stream."""
    _check_name(stream)
    try:
        return await _api(nc, f"STREAM.INFO.{stream}", None, timeout=timeout,
                          what=f"info of stream {stream}")  # fmt: skip
    except _ApiError as error:
        if error.err_code == STREAM_NOT_FOUND:
            return None
        raise


async def list_streams(nc: Client, *, timeout: float = 10.0) -> StreamListing:
    """Every stream's info, page by page ($JS.API.STREAM.LIST)."""
    streams: list[dict[str, Any]] = []
    missing: list[str] = []
    while True:
        page = await _api(nc, "STREAM.LIST", {"offset": len(streams)}, timeout=timeout,
                          what="listing the streams")  # fmt: skip
        batch = page.get("streams") or []
        streams.extend(batch)
        missing.extend(page.get("missing") or [])
        if not batch or len(streams) >= int(page.get("total") or 0):
            return StreamListing(streams, sorted(set(missing)))


# --- which streams a pod backs up -----------------------------------------------------------
def _holders(info: Mapping[str, Any]) -> set[str]:
    cluster = info.get("cluster") or {}
    names = {str(cluster["leader"])} if cluster.get("leader") else set()
    names.update(str(peer["name"]) for peer in cluster.get("replicas") or [] if peer.get("name"))
    return names


def streams_to_back_up(
    pod_code: str, streams: Iterable[Mapping[str, Any]], *, first_pod: str
) -> list[str]:
    """Names of the streams `pod_code`'s backup must snapshot, in the order given.

    `streams` are stream infos as $JS.API.STREAM.INFO / STREAM.LIST return them. A stream
    kept on one server (R1, a territory stream) is backed up by the pod whose server leads
    it. A stream replicated over several servers (GLOBAL_EVENTS) is the same data on every
    replica, so it is backed up once for the mesh, by `first_pod`, whether or not that pod
    holds a replica (the snapshot comes from the stream leader either way). A stream without
    cluster info comes from a server outside a cluster, which then holds it.
    """
    own = nats_server_name(pod_code)
    chosen: list[str] = []
    for info in streams:
        config = info.get("config") or {}
        name = str(config.get("name") or "")
        if not name or name in chosen:
            continue
        holders = _holders(info)
        replicated = int(config.get("num_replicas") or 1) > 1 or len(holders) > 1
        if replicated:
            wanted = pod_code == first_pod
        elif "cluster" not in info:
            wanted = True
        else:
            wanted = own in holders
        if wanted:
            chosen.append(name)
    return chosen


# --- snapshot ---------------------------------------------------------------------------
def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


async def snapshot_stream(
    nc: Client,
    stream: str,
    dest: Path,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    timeout: float = 10.0,
    check_msgs: bool = False,
) -> SnapshotInfo:
    """Write the stream's snapshot to `dest`/stream.tar.s2 and its config and state to
    `dest`/backup.json (written last: its presence marks a complete backup).

    The snapshot holds every message up to the state the server reports when it starts (the
    state saved in backup.json); messages stored meanwhile may be in it too. `timeout` bounds
    each API reply and each wait for the next chunk; `check_msgs` has the server verify every
    message's checksum first. Consumers are not included (the program defines none; clients
    recreate theirs). A snapshot that fails leaves a previous backup in `dest` as it was.
    """
    _check_name(stream)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise BackupError(f"chunk_size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    what = f"snapshot of stream {stream}"
    started = time.monotonic()
    # In a cluster only the stream leader answers a snapshot request, and nobody answers one
    # for a stream that does not exist: ask for its info first to tell the two apart.
    info = await stream_info(nc, stream, timeout=timeout)
    if info is None:
        raise BackupError(
            f"{what}: no such stream. List the streams (`nats stream ls`) and check the name"
        )
    if (info.get("config") or {}).get("storage") == "memory":
        raise BackupError(f"{what}: a memory stream has no snapshot; only file streams do")

    dest.mkdir(parents=True, exist_ok=True)
    archive, metadata = dest / ARCHIVE_NAME, dest / METADATA_NAME
    partial = archive.with_name(archive.name + ".partial")
    inbox = nc.new_inbox()
    # Subscribe before asking: the server streams to the inbox as soon as it has interest.
    # No pending limits beyond the server's window: a dropped chunk would corrupt the archive.
    sub = await nc.subscribe(inbox, pending_msgs_limit=0, pending_bytes_limit=0)
    try:
        request = {"deliver_subject": inbox, "no_consumers": True, "chunk_size": chunk_size,
                   "jsck": check_msgs}  # fmt: skip
        reply = await _api(nc, f"STREAM.SNAPSHOT.{stream}", request, timeout=timeout, what=what)
        digest, size, chunks = hashlib.sha256(), 0, 0
        with partial.open("wb") as out:
            while True:
                try:
                    msg = await sub.next_msg(timeout=timeout)
                except nats.errors.TimeoutError as error:
                    raise BackupError(
                        f"{what}: no data from the server for {timeout}s after {size} bytes"
                        " (stream leader gone?); retry"
                    ) from error
                if not msg.data:
                    _check_end(msg, size, what)
                    break
                if msg.reply:
                    # Acknowledge before writing: the server stalls (2 s, then gives up)
                    # once 8 MiB are unacknowledged.
                    await nc.publish(msg.reply, b"")
                out.write(msg.data)
                digest.update(msg.data)
                size += len(msg.data)
                chunks += 1
            out.flush()
            os.fsync(out.fileno())
        # The archive first, backup.json (which vouches for it by SHA-256) last: a crash in
        # between leaves a mismatch that restore refuses, never a wrong restore.
        os.replace(partial, archive)
        state = reply.get("state") or {}
        document = {
            "config": reply.get("config") or {},
            "state": state,
            "format": FORMAT,
            "archive": {"file": ARCHIVE_NAME, "bytes": size, "sha256": digest.hexdigest()},
            "created": datetime.now(UTC).isoformat(),
            "leader": ((info.get("cluster") or {}).get("leader")),
        }
        _write_atomically(metadata, json.dumps(document, indent=2).encode() + b"\n")
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
        partial.unlink(missing_ok=True)
    return SnapshotInfo(
        stream=stream, archive=archive, metadata=metadata, bytes=size,
        sha256=digest.hexdigest(), chunks=chunks, messages=int(state.get("messages") or 0),
        first_seq=int(state.get("first_seq") or 0), last_seq=int(state.get("last_seq") or 0),
        seconds=time.monotonic() - started,
    )  # fmt: skip


def _check_end(msg: Msg, size: int, what: str) -> None:
    """The end-of-snapshot marker: no payload, status 204 (or 408 and why it stopped)."""
    headers = msg.headers or {}
    status = headers.get("Status")
    if status is not None and status != "204":
        raise BackupError(
            f"{what}: the server ended the snapshot with {status}"
            f" {headers.get('Description', '')} after {size} bytes; retry"
        )
    if size == 0:
        # Without a single chunk the server sends an end without a status: its snapshot
        # reader failed at once (the server log says why).
        raise BackupError(f"{what}: the server sent an empty snapshot; see its log, then retry")


# --- restore ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Backup:
    archive: Path
    config: dict[str, Any]
    state: dict[str, Any]
    size: int


def _load_backup(src: Path, stream: str) -> _Backup:
    """Read backup.json and check the archive against it, before anything is changed."""
    metadata, archive = src / METADATA_NAME, src / ARCHIVE_NAME
    what = f"restore of stream {stream} from {src}"
    if not metadata.is_file() or not archive.is_file():
        raise BackupError(
            f"{what}: {METADATA_NAME} and {ARCHIVE_NAME} are both needed there; point at the"
            " directory a snapshot wrote (an incomplete one has no backup.json)"
        )
    try:
        document = json.loads(metadata.read_text())
        config, state = dict(document["config"]), dict(document["state"])
    except (ValueError, KeyError, TypeError) as error:
        raise BackupError(f"{what}: {metadata} is not a stream backup: {error!r}") from error
    if config.get("name") != stream:
        # The server cannot rename on restore: the archive's own metadata carries the name.
        raise BackupError(
            f"{what}: the backup is of stream {config.get('name')!r}; a stream cannot be"
            " restored under another name"
        )
    size = archive.stat().st_size
    expected = document.get("archive")
    if isinstance(expected, dict):
        digest = hashlib.sha256()
        with archive.open("rb") as data:
            while block := data.read(1024 * 1024):
                digest.update(block)
        if size != expected.get("bytes") or digest.hexdigest() != expected.get("sha256"):
            raise BackupError(
                f"{what}: {archive} does not match {METADATA_NAME} ({size} bytes, sha256"
                f" {digest.hexdigest()}; recorded {expected.get('bytes')} bytes, sha256"
                f" {expected.get('sha256')}): the copy is damaged; fetch it again"
            )
    return _Backup(archive, config, state, size)


async def delete_stream(nc: Client, stream: str, *, timeout: float = 10.0) -> None:
    """Delete a stream and all its messages ($JS.API.STREAM.DELETE)."""
    _check_name(stream)
    reply = await _api(nc, f"STREAM.DELETE.{stream}", None, timeout=timeout,
                       what=f"deleting stream {stream}")  # fmt: skip
    if not reply.get("success"):
        raise BackupError(f"deleting stream {stream}: the server did not confirm: {reply}")


def _check_chunk_reply(msg: Msg, what: str) -> None:
    if not msg.data:
        return
    text = msg.data.decode(errors="replace")
    if text.startswith("-ERR"):
        raise BackupError(f"{what}: the server refused a chunk: {text}")
    try:
        result = json.loads(text)
    except ValueError:
        return
    if isinstance(result, dict) and isinstance(result.get("error"), dict):
        raise _ApiError(what, result["error"])


async def restore_stream(
    nc: Client,
    stream: str,
    src: Path,
    *,
    force: bool,
    timeout: float = 10.0,
    finish_timeout: float = 600.0,
    settle_timeout: float = 30.0,
    chunk_size: int = RESTORE_CHUNK_SIZE,
) -> RestoreInfo:
    """Restore `stream` from the backup directory `src` (as `snapshot_stream` wrote it):
    its config (replicas, placement, subjects, limits) and every message with its sequence.

    An existing stream that holds messages is left alone (RestoreRefused) unless `force`;
    an existing empty stream (e.g. recreated by the deploy's stream job) is replaced. The
    server cannot restore over an existing stream, so replacing means deleting it first:
    if the restore then fails (e.g. the placement's server is down), the stream is gone
    until a retry succeeds. The archive is checked against backup.json before that.

    `timeout` bounds each API reply and chunk; `finish_timeout` the server's work after the
    last chunk; `settle_timeout` the wait until every replica has caught up.
    """
    _check_name(stream)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise BackupError(f"chunk_size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    what = f"restore of stream {stream}"
    started = time.monotonic()
    backup = _load_backup(src, stream)

    existing = await stream_info(nc, stream, timeout=timeout)
    replaced = existing is not None
    if existing is not None:
        messages = int((existing.get("state") or {}).get("messages") or 0)
        if messages and not force:
            raise RestoreRefused(
                f"{what}: the stream exists and holds {messages} messages; nothing was changed."
                " Restore with force to delete it and replace it with the backup"
            )
        await delete_stream(nc, stream, timeout=timeout)

    try:
        sent, state = await _transfer(nc, stream, backup, timeout, finish_timeout, chunk_size,
                                      deleted=replaced)  # fmt: skip
    except BackupError as error:
        hint = _RESTORE_HINTS.get(getattr(error, "err_code", 0), "")
        if replaced:
            hint += " The existing stream had been deleted; the backup is intact: retry."
        if not hint:
            raise
        raise BackupError(f"{error}.{hint}") from error
    current = await _wait_replicas_current(
        nc, stream, int(backup.config.get("num_replicas") or 1), settle_timeout, timeout, what
    )
    return RestoreInfo(
        stream=stream, replaced=replaced, bytes=sent,
        messages=int(state.get("messages") or 0), first_seq=int(state.get("first_seq") or 0),
        last_seq=int(state.get("last_seq") or 0), replicas_current=current,
        seconds=time.monotonic() - started,
    )  # fmt: skip


async def _transfer(
    nc: Client, stream: str, backup: _Backup, timeout: float, finish_timeout: float,
    chunk_size: int, *, deleted: bool,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """The restore request, the chunks, the final empty message: bytes sent, restored state."""
    what = f"restore of stream {stream}"
    request = {"config": backup.config, "state": backup.state}
    reply = await _restore_request(nc, stream, request, timeout=timeout, what=what,
                                   deleted=deleted)  # fmt: skip
    deliver = str(reply.get("deliver_subject") or "")
    if not deliver:
        raise BackupError(f"{what}: the server named no subject to send the snapshot to")

    sent = 0
    with backup.archive.open("rb") as data:
        while chunk := data.read(chunk_size):
            # The leader's subscription to `deliver` reaches the server this client is on
            # over a route; the first chunk can get there before it (measured: about 1 run
            # in 6 on a 3-node cluster).
            answer = await _request(nc, deliver, chunk, timeout=timeout,
                                    what=f"{what} (after {sent} bytes)",
                                    wait_for_responder=RESPONDER_WAIT)  # fmt: skip
            _check_chunk_reply(answer, what)
            sent += len(chunk)
    # The empty message ends the transfer; the server restores and answers then.
    final = await _request(nc, deliver, b"", timeout=finish_timeout, what=what,
                           wait_for_responder=RESPONDER_WAIT)  # fmt: skip
    _check_chunk_reply(final, what)
    try:
        created = json.loads(final.data)
    except ValueError as error:
        raise BackupError(f"{what}: unexpected final reply {final.data[:200]!r}") from error
    state = created.get("state") or {}
    expected_last = int(backup.state.get("last_seq") or 0)
    if int(state.get("last_seq") or 0) < expected_last:
        raise BackupError(
            f"{what}: restored stream ends at sequence {state.get('last_seq')}, the backup at"
            f" {expected_last}"
        )
    return sent, state


async def _restore_request(
    nc: Client, stream: str, request: Mapping[str, Any], *, timeout: float, what: str,
    deleted: bool,
) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await _api(nc, f"STREAM.RESTORE.{stream}", request, timeout=timeout,
                              what=what)  # fmt: skip
        except _ApiError as error:
            # Right after our delete the meta group may still list the stream for a moment.
            retry = deleted and error.err_code == STREAM_NAME_EXISTS_RESTORE
            if retry and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                continue
            raise


async def _wait_replicas_current(
    nc: Client, stream: str, replicas: int, settle_timeout: float, timeout: float, what: str
) -> int:
    """Poll the stream's info until it has a leader and every replica is current."""
    deadline = time.monotonic() + settle_timeout
    current = 0
    while True:
        info = await stream_info(nc, stream, timeout=timeout)
        cluster = (info or {}).get("cluster") or {}
        if info is not None and "cluster" not in info:
            return 1  # a server outside a cluster: the stream is where it was restored
        peers = cluster.get("replicas") or []
        current = (1 if cluster.get("leader") else 0) + sum(
            1 for peer in peers if peer.get("current") and not peer.get("offline")
        )
        if current >= replicas:
            return current
        if time.monotonic() > deadline:
            raise BackupError(
                f"{what}: the stream is restored on its leader, but only {current} of"
                f" {replicas} replicas are current after {settle_timeout}s; check"
                f" `nats stream info {stream}` (a server down?)"
            )
        await asyncio.sleep(0.2)
