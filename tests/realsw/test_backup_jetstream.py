"""JetStream backups (snapshot and restore API) against a real 3-node nats-server 2.10 cluster.

Why: the snapshot/restore protocol (chunks, flow control acknowledgements, the end marker,
the restore's request-reply transfer) is implemented here, not by a library, and only the
real server can tell whether it is spoken right: whether a restored stream really has every
message with its sequence, headers and timestamp, its replicas and its placement back.

The cluster is the dev stack's three servers from the program's own configs, rebound to
loopback (tests/support/jetstream_bed.py), with the program's streams: GLOBAL_EVENTS (R3) and
TERRITORY_<CODE> (R1, pinned by tag). It starts once for the module. Each test owns one
stream, so they can run in any order. Numbers are printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nats.aio.client import Client

from tests.support.jetstream_bed import JetStreamBed, free_ports
from unityplan_infra.backup import jetstream
from unityplan_infra.backup.errors import BackupError, RestoreRefused
from unityplan_infra.backup.jetstream import (
    connect,
    list_streams,
    restore_stream,
    snapshot_stream,
    stream_info,
    streams_to_back_up,
)
from unityplan_infra.nats.streams import GLOBAL_STREAM, stream_configs

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
WINDOW = 8 * 1024 * 1024  # the server's snapshot flow-control window
NO_MESSAGE = 10037  # err_code of STREAM.MSG.GET for a sequence the stream does not hold
# Metadata nats-server 2.12+ adds to the stream config of every API reply (the server's
# version and API level, computed per reply, never stored; ADR-44): a snapshot's stored config
# has only what the stream was created with (`_nats.req.level` among it).
REPLY_ONLY_METADATA = ("_nats.ver", "_nats.level")


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JetStreamBed]:
    with JetStreamBed(tmp_path_factory.mktemp("jetstream")) as running:
        yield running


def stored_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stream config from an API reply without the metadata only replies carry."""
    metadata = {key: value for key, value in (config.get("metadata") or {}).items()
                if key not in REPLY_ONLY_METADATA}  # fmt: skip
    stored = {key: value for key, value in config.items() if key != "metadata"}
    return {**stored, "metadata": metadata} if metadata else stored


def run(bed: JetStreamBed, code: str, work: Callable[[Client], Awaitable[T]]) -> T:
    """Run `work` with a client connected to `code`'s server; bounded, and always closed."""

    async def main() -> T:
        nc = await bed.connect(code)
        try:
            return await asyncio.wait_for(work(nc), 60)
        finally:
            await nc.close()

    return asyncio.run(main())


# --- messages ------------------------------------------------------------------------------
Published = list[tuple[str, dict[str, str], bytes]]


def sample_messages(prefix: str, count: int, batch: str = "") -> Published:
    """Subjects, headers and payloads that a careless copy would mangle: binary with NUL and
    CR LF, an empty payload, non-ASCII headers, a msg id."""
    messages: Published = []
    for index in range(count):
        payload = bytes([index % 256]) + b"\x00\r\n" + os.urandom(index % 200) + b"\xff"
        if index == 7:
            payload = b""
        headers = {
            "Nats-Msg-Id": f"{prefix}-{batch}{index}",
            "X-Index": str(index),
            "X-Text": "ærø ø",
        }
        messages.append((f"{prefix}.{'ab'[index % 2]}", headers, payload))
    return messages


async def publish(nc: Client, messages: Published) -> list[int]:
    js = nc.jetstream(timeout=5)
    sequences = []
    for subject, headers, payload in messages:
        ack = await js.publish(subject, payload, headers=headers or None)
        sequences.append(ack.seq)
    return sequences


async def delete_message(nc: Client, stream: str, seq: int) -> None:
    reply = await nc.request(
        f"$JS.API.STREAM.MSG.DELETE.{stream}", json.dumps({"seq": seq}).encode(), timeout=5
    )
    assert json.loads(reply.data).get("success"), reply.data


async def read_stream(nc: Client, stream: str) -> dict[int, dict[str, Any] | None]:
    """Every sequence up to the last, as the server stores it (raw header block, payload,
    timestamp), or None for a sequence the stream does not hold."""
    info = await stream_info(nc, stream)
    assert info is not None, f"stream {stream} missing"
    found: dict[int, dict[str, Any] | None] = {}
    for seq in range(1, int(info["state"]["last_seq"]) + 1):
        reply = await nc.request(
            f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"seq": seq}).encode(), timeout=5
        )
        answer = json.loads(reply.data)
        if "error" in answer:
            assert answer["error"]["err_code"] == NO_MESSAGE, answer
            found[seq] = None
        else:
            message = answer["message"]
            found[seq] = {
                "subject": message["subject"],
                "seq": message["seq"],
                "hdrs": base64.b64decode(message.get("hdrs") or ""),
                "data": base64.b64decode(message.get("data") or ""),
                "time": message["time"],
            }
    return found


def parse_headers(block: bytes) -> dict[str, str]:
    lines = block.decode().split("\r\n")
    assert lines[0] == "NATS/1.0", block
    return dict(line.split(": ", 1) for line in lines[1:] if line)


def assert_as_published(
    stored: dict[int, dict[str, Any] | None],
    messages: Published,
    sequences: list[int],
    deleted: set[int],
) -> None:
    """What the server holds is exactly what was published (so comparing a restore with it
    compares real content, not two empty reads)."""
    assert set(stored) == set(range(1, max(sequences) + 1))
    for seq in deleted:
        assert stored[seq] is None
    for (subject, headers, payload), seq in zip(messages, sequences, strict=True):
        if seq in deleted:
            continue
        message = stored[seq]
        assert message is not None
        assert (message["subject"], message["seq"], message["data"]) == (subject, seq, payload)
        assert parse_headers(message["hdrs"]) == headers


async def wait_replicas(nc: Client, stream: str, count: int, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = await stream_info(nc, stream)
        cluster = (info or {}).get("cluster") or {}
        peers = cluster.get("replicas") or []
        if (
            info is not None
            and cluster.get("leader")
            and len(peers) == count - 1
            and all(peer.get("current") and not peer.get("offline") for peer in peers)
        ):
            return info
        assert time.monotonic() < deadline, f"{stream} not {count} current replicas: {info}"
        await asyncio.sleep(0.1)


# --- round trips ---------------------------------------------------------------------------
def test_r1_territory_stream_comes_back_after_its_server_lost_its_store(
    bed: JetStreamBed, tmp_path: Path
) -> None:
    """TERRITORY_DK (R1, pinned to dk's server) over the flow-control window: dk's whole
    JetStream store is wiped (a lost volume), the stream job's assignment brings the stream
    back empty, and the restore (without force: it is empty) brings every message back."""
    stream, dest = "TERRITORY_DK", tmp_path / "TERRITORY_DK"
    small = sample_messages("territory.dk", 60)
    # Random (incompressible) payloads push the archive past the 8 MiB window, so the
    # server only finishes if the chunks are acknowledged.
    big: Published = [("territory.dk.big", {"X-Big": str(i)}, os.urandom(512 * 1024))
                      for i in range(20)]  # fmt: skip
    messages = small + big

    async def prepare(nc: Client) -> tuple[list[int], dict[int, Any], dict[str, Any], Any]:
        sequences = await publish(nc, messages)
        await delete_message(nc, stream, 5)  # a gap the restore must keep
        stored = await read_stream(nc, stream)
        info = await stream_info(nc, stream)
        assert info is not None
        # Through a server that does not hold the stream: the request reaches its leader.
        snapshot = await snapshot_stream(nc, stream, dest)
        return sequences, stored, info, snapshot

    sequences, original, info_before, snap = run(bed, "no", prepare)
    assert_as_published(original, messages, sequences, deleted={5})
    assert info_before["cluster"]["leader"] == bed.server_name("dk")
    print(f"\nR1 snapshot: {len(messages)} messages, {snap.bytes} bytes, {snap.chunks} chunks,"
          f" {snap.seconds:.3f}s")  # fmt: skip
    assert snap.bytes > WINDOW and snap.chunks > WINDOW // jetstream.DEFAULT_CHUNK_SIZE
    assert (snap.messages, snap.first_seq, snap.last_seq) == (len(messages) - 1, 1, len(messages))
    assert snap.archive.stat().st_size == snap.bytes
    saved = json.loads(snap.metadata.read_text())
    assert saved["config"] == stored_config(info_before["config"])
    assert saved["state"]["last_seq"] == len(messages)
    assert not list(dest.glob("*.partial"))

    # Lose dk's store. While dk is down its stream cannot be snapshotted: say so, quickly
    # (the meta leader answers "offline" once it has seen dk leave; before, nobody answers).
    bed.stop_server("dk")
    try:

        async def offline(nc: Client) -> None:
            with pytest.raises(BackupError, match=r"TERRITORY_DK.*(offline|no answer)") as failure:
                await snapshot_stream(nc, stream, tmp_path / "offline", timeout=3)
            assert not isinstance(failure.value, RestoreRefused)
            assert not (tmp_path / "offline" / jetstream.METADATA_NAME).exists()

        run(bed, "se", offline)
        bed.wipe_store("dk")
    finally:
        bed.start_server("dk")
        bed.wait_formed(timeout=30)

    async def restore(nc: Client) -> tuple[dict[str, Any], Any, dict[int, Any], dict[str, Any]]:
        deadline = time.monotonic() + 10
        while True:
            try:
                empty = await stream_info(nc, stream, timeout=1)
            except BackupError:
                # No answer: dk has not recreated the stream yet, so it has no leader. A
                # request sent then is lost, not queued (nats-server 2.14 takes ~2 s here).
                empty = None
            if empty is not None:
                break
            assert time.monotonic() < deadline, "the meta group did not recreate the stream"
            await asyncio.sleep(0.1)
        result = await restore_stream(nc, stream, dest, force=False)
        return empty, result, await read_stream(nc, stream), await wait_replicas(nc, stream, 1)

    empty, restored, after, info_after = run(bed, "se", restore)
    assert empty["state"]["messages"] == 0 and empty["state"]["last_seq"] == 0  # really lost
    print(f"R1 restore: {restored.bytes} bytes, {restored.seconds:.3f}s")
    assert restored.replaced and restored.messages == len(messages) - 1
    assert after == original  # subject, headers, payload, sequence, timestamp; the gap
    assert info_after["config"] == info_before["config"]
    assert info_after["cluster"]["leader"] == bed.server_name("dk")  # placement honoured


def test_r3_global_stream_round_trip_keeps_three_current_replicas(
    bed: JetStreamBed, tmp_path: Path
) -> None:
    """GLOBAL_EVENTS (R3): snapshot in small chunks with the server's checksum check, delete,
    restore; all three replicas hold the data (read again after the leader steps down)."""
    stream, dest = GLOBAL_STREAM, tmp_path / GLOBAL_STREAM
    messages = sample_messages("global", 150)

    async def prepare(nc: Client) -> tuple[list[int], dict[int, Any], dict[str, Any], Any]:
        info = await wait_replicas(nc, stream, 3)  # e.g. dk's replica, after a wipe
        sequences = await publish(nc, messages)
        await delete_message(nc, stream, 42)
        stored = await read_stream(nc, stream)
        snapshot = await snapshot_stream(nc, stream, dest, chunk_size=4096, check_msgs=True)
        assert await stream_info(nc, stream) is not None
        await jetstream.delete_stream(nc, stream)
        assert await stream_info(nc, stream) is None
        return sequences, stored, info, snapshot

    leader_before = run(bed, "dk", lambda nc: wait_replicas(nc, stream, 3))["cluster"]["leader"]
    follower = next(code for code in bed.servers if bed.server_name(code) != leader_before)
    sequences, original, info_before, snap = run(bed, follower, prepare)
    assert_as_published(original, messages, sequences, deleted={42})
    print(f"\nR3 snapshot: {len(messages)} messages, {snap.bytes} bytes, {snap.chunks} chunks,"
          f" {snap.seconds:.3f}s")  # fmt: skip
    assert snap.chunks > 1 and snap.last_seq == len(messages)

    async def restore(nc: Client) -> tuple[Any, dict[int, Any], dict[str, Any]]:
        result = await restore_stream(nc, stream, dest, force=False)
        return result, await read_stream(nc, stream), await wait_replicas(nc, stream, 3)

    restored, after, info_after = run(bed, follower, restore)
    print(f"R3 restore: {restored.bytes} bytes, {restored.seconds:.3f}s")
    assert not restored.replaced and restored.replicas_current == 3
    assert after == original
    assert info_after["config"] == info_before["config"]
    assert info_after["config"]["num_replicas"] == 3
    cluster = info_after["cluster"]
    holders = {cluster["leader"], *(peer["name"] for peer in cluster["replicas"])}
    assert holders == {server.name for server in bed.servers.values()}

    # Another replica leads now: it serves the same messages, so the followers have them.
    async def new_leader(nc: Client) -> tuple[str, dict[int, Any]]:
        old = (await wait_replicas(nc, stream, 3))["cluster"]["leader"]
        reply = await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
        assert json.loads(reply.data).get("success"), reply.data
        deadline = time.monotonic() + 15
        while True:
            info = await wait_replicas(nc, stream, 3)
            if info["cluster"]["leader"] != old:
                return info["cluster"]["leader"], await read_stream(nc, stream)
            assert time.monotonic() < deadline, "no new leader"
            await asyncio.sleep(0.1)

    leader, again = run(bed, follower, new_leader)
    assert leader != cluster["leader"]
    assert again == original


def test_restore_refuses_a_stream_with_messages_unless_forced(
    bed: JetStreamBed, tmp_path: Path
) -> None:
    stream, dest = "TERRITORY_SE", tmp_path / "TERRITORY_SE"
    kept = sample_messages("territory.se", 12)
    later = sample_messages("territory.se", 5, batch="later-")

    async def prepare(nc: Client) -> tuple[dict[int, Any], dict[int, Any]]:
        await publish(nc, kept)
        at_snapshot = await read_stream(nc, stream)
        await snapshot_stream(nc, stream, dest)
        await publish(nc, later)
        return at_snapshot, await read_stream(nc, stream)

    at_snapshot, current = run(bed, "se", prepare)
    assert len(current) == len(kept) + len(later)
    damaged = tmp_path / "damaged"
    shutil.copytree(dest, damaged)
    archive = damaged / jetstream.ARCHIVE_NAME
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))

    async def refused(nc: Client) -> dict[int, Any]:
        with pytest.raises(RestoreRefused, match=r"TERRITORY_SE.*17 messages.*force"):
            await restore_stream(nc, stream, dest, force=False)
        # A damaged copy is caught before the existing stream is deleted, even with force.
        with pytest.raises(BackupError, match="damaged") as failure:
            await restore_stream(nc, stream, damaged, force=True)
        assert not isinstance(failure.value, RestoreRefused)
        return await read_stream(nc, stream)

    assert run(bed, "dk", refused) == current  # untouched

    async def forced(nc: Client) -> tuple[Any, dict[int, Any], dict[str, Any]]:
        result = await restore_stream(nc, stream, dest, force=True)
        return result, await read_stream(nc, stream), await wait_replicas(nc, stream, 1)

    restored, after, info = run(bed, "dk", forced)
    assert restored.replaced and restored.last_seq == len(kept)
    assert after == at_snapshot
    assert info["cluster"]["leader"] == bed.server_name("se")


def test_unacknowledged_chunks_end_in_the_servers_408_and_keep_the_last_backup(
    bed: JetStreamBed, tmp_path: Path
) -> None:
    """Flow control is real: with the chunk acknowledgements dropped, the server stops once
    8 MiB are unacknowledged and ends with `408 No Flow Response`. That end is reported, and
    the previous backup in the directory stays whole."""
    stream, dest = "SCRATCH_FLOW", tmp_path / "SCRATCH_FLOW"
    config = {"name": stream, "subjects": ["scratch.flow"], "storage": "file", "num_replicas": 1}
    big: Published = [("scratch.flow", {}, os.urandom(512 * 1024)) for _ in range(18)]

    async def scenario(nc: Client) -> tuple[dict[str, bytes], dict[str, bytes], str]:
        reply = await nc.request(
            f"$JS.API.STREAM.CREATE.{stream}", json.dumps(config).encode(), timeout=5
        )
        assert "error" not in json.loads(reply.data), reply.data
        try:
            await publish(nc, big)
            good = await snapshot_stream(nc, stream, dest)
            assert good.bytes > WINDOW
            before = {path.name: path.read_bytes() for path in dest.iterdir()}
            publish_ = nc.publish

            async def drop_acks(subject: str, payload: bytes = b"", **options: Any) -> None:
                if not subject.startswith("$JS.SNAPSHOT.ACK."):  # jsSnapshotAckT
                    await publish_(subject, payload, **options)

            nc.publish = drop_acks  # type: ignore[method-assign,assignment]
            try:
                with pytest.raises(BackupError) as failure:
                    await snapshot_stream(nc, stream, dest, timeout=5)
            finally:
                nc.publish = publish_  # type: ignore[method-assign]
            after = {path.name: path.read_bytes() for path in dest.iterdir()}
            return before, after, str(failure.value)
        finally:
            await jetstream.delete_stream(nc, stream)

    before, after, message = run(bed, "dk", scenario)
    assert "SCRATCH_FLOW" in message and "408 No Flow Response" in message, message
    assert set(before) == {jetstream.ARCHIVE_NAME, jetstream.METADATA_NAME}
    assert after == before


# --- errors --------------------------------------------------------------------------------
def test_clear_errors(bed: JetStreamBed, tmp_path: Path) -> None:
    async def failures(nc: Client) -> None:
        with pytest.raises(BackupError, match=r"NO_SUCH_STREAM: no such stream.*nats stream ls"):
            await snapshot_stream(nc, "NO_SUCH_STREAM", tmp_path / "none", timeout=3)
        assert not (tmp_path / "none" / jetstream.METADATA_NAME).exists()
        with pytest.raises(BackupError, match="not a JetStream stream name"):
            await snapshot_stream(nc, "A.B", tmp_path / "bad")
        # A memory stream has nothing to snapshot; say so instead of a server error.
        memory = {"name": "SCRATCH_MEMORY", "subjects": ["scratch.memory"],
                  "storage": "memory", "num_replicas": 1}  # fmt: skip
        create = "$JS.API.STREAM.CREATE.SCRATCH_MEMORY"
        reply = await nc.request(create, json.dumps(memory).encode(), timeout=5)
        assert "error" not in json.loads(reply.data), reply.data
        try:
            with pytest.raises(BackupError, match="SCRATCH_MEMORY: a memory stream"):
                await snapshot_stream(nc, "SCRATCH_MEMORY", tmp_path / "memory")
        finally:
            await jetstream.delete_stream(nc, "SCRATCH_MEMORY")
        # Restores from something that is not a complete backup change nothing.
        (tmp_path / "empty").mkdir()
        with pytest.raises(BackupError, match=r"backup\.json and stream\.tar\.s2 are both needed"):
            await restore_stream(nc, "TERRITORY_NO", tmp_path / "empty", force=True)
        snapshot = await snapshot_stream(nc, "TERRITORY_NO", tmp_path / "no")
        with pytest.raises(BackupError, match="backup is of stream 'TERRITORY_NO'"):
            await restore_stream(nc, "TERRITORY_XX", tmp_path / "no", force=True)
        assert snapshot.messages == 0
        assert await stream_info(nc, "TERRITORY_NO") is not None
        # A placement no server matches: the (empty) stream was deleted first, and the error
        # says so and what to do; the intact backup then brings it back.
        unplaceable = tmp_path / "unplaceable"
        shutil.copytree(tmp_path / "no", unplaceable)
        document = json.loads((unplaceable / jetstream.METADATA_NAME).read_text())
        document["config"]["placement"] = {"tags": ["territory:xx"]}
        (unplaceable / jetstream.METADATA_NAME).write_text(json.dumps(document))
        with pytest.raises(BackupError, match=r"err_code 10005\)\. No server matches.*deleted"):
            await restore_stream(nc, "TERRITORY_NO", unplaceable, force=False)
        assert await stream_info(nc, "TERRITORY_NO") is None
        await restore_stream(nc, "TERRITORY_NO", tmp_path / "no", force=False)
        info = await stream_info(nc, "TERRITORY_NO")
        assert info is not None and info["cluster"]["leader"] == bed.server_name("no")

    run(bed, "no", failures)
    port = free_ports(1)[0]

    async def unreachable() -> None:
        with pytest.raises(
            BackupError, match=rf"cannot connect to NATS at nats://127\.0\.0\.1:{port}"
        ):
            await connect(f"nats://127.0.0.1:{port}", user="unityplan", password="x", timeout=2)
        with pytest.raises(BackupError, match=r"cannot connect.*Authorization.*user and password"):
            await connect(bed.url("dk"), user=bed.user, password="wrong", timeout=2)
        nc = await connect(bed.url("dk"), user=bed.user, password=bed.password)
        await nc.close()
        with pytest.raises(BackupError, match="connection is closed"):
            await snapshot_stream(nc, "TERRITORY_DK", tmp_path / "closed")

    started = time.monotonic()
    asyncio.run(asyncio.wait_for(unreachable(), 20))
    assert time.monotonic() - started < 10


# --- which pod backs up what, on the live cluster ---------------------------------------------
def test_each_stream_is_backed_up_by_exactly_one_pod(bed: JetStreamBed) -> None:
    listing = run(bed, "se", list_streams)
    names = {stream["name"] for stream in stream_configs(bed.deployment)}
    program = [info for info in listing.streams if info["config"]["name"] in names]
    assert {info["config"]["name"] for info in program} == names and listing.missing == []
    first = bed.deployment.pods[0].code
    chosen = {code: streams_to_back_up(code, program, first_pod=first) for code in bed.servers}
    assert chosen == {
        "dk": [GLOBAL_STREAM, "TERRITORY_DK"],
        "no": ["TERRITORY_NO"],
        "se": ["TERRITORY_SE"],
    }
    assert sorted(name for names_ in chosen.values() for name in names_) == sorted(names)


def test_nats_py_still_has_no_snapshot_api() -> None:
    """The protocol is implemented here because nats-py lacks it; if a later nats-py gains
    it, this fails so the hand-written client is reconsidered."""
    from importlib import metadata

    import nats.js.manager

    assert not any("snapshot" in name.lower() or "restore" in name.lower()
                   for name in dir(nats.js.manager.JetStreamManager))  # fmt: skip
    assert metadata.version("nats-py") == "2.16.0"
