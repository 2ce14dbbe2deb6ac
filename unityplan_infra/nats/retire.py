"""Retire NATS servers: hand their share of JetStream over, then drop them from the meta group.

Part of the stream job (standard library and nats-py only; apply_streams.py says how it
runs). A pod leaves in two steps: with `leaving: true` it is still deployed and routed and
this job runs with its server in `retired_servers`; with `retired: true` its containers go
and the job's spec is the same, so it is not run again, except when the retired pod was the
first in multi-host (the job moves to the next pod's host); then it finds nothing to do and
must not need that server (it may no longer be reachable). The pod keeps its TERRITORY stream,
placed on the first staying pod's server (nats/streams.py), and its server must leave the
cluster without leaving a dead peer behind: a meta group that still counts a gone server
needs that much more of the others for its quorum, and every replicated stream with a
replica there runs one replica short for good. Before anything changes the job stops, with
what to do, when a hand-over cannot succeed (below). What it does, after ensuring the
streams (which changes the leaving pod's TERRITORY placement: JetStream then moves that
stream, all its messages, to the keeper's server):

1. every replicated stream with a peer on a retired server:
   `$JS.API.STREAM.PEER.REMOVE.<stream>` {"peer": server}: the meta leader puts a
   replacement on another server, which catches up from the others. A leader whose peer
   is removed hands its leadership on by itself (no election timeout: writers waited one
   ack timeout at most, measured on 2.10.25 and 2.15.1);
2. waits (bounded) until each such stream again has its full replica count, none on a
   retired server, all current; and each R1 stream that sat on a retired server has moved
   to another server with at least the messages it had before;
3. removes each retired server from the JetStream meta group (`$JS.API.SERVER.REMOVE`,
   system account only, by name and by peer ID) and waits until the meta leader no longer
   lists it. A meta leader on a retired server steps down first (`META.LEADER.STEPDOWN`):
   on 2.10 a leader that removes itself left the others without a meta leader for 7 s
   (an election timeout); 2.14 and 2.15 hand over by themselves.

The retired server runs while this happens (step 1): on removal it logs "JetStream being
DISABLED, our server was removed from the cluster", shuts its JetStream down and goes on as
a plain NATS server, still routed, so its clients still reach JetStream through the others.
In step 2 the others reload without its route and it is stopped; the job then changes
nothing (tests/realsw/test_nats_retire.py).

Idempotent: a stream with no peer on a retired server and a server that is no member of
the meta group are left alone ("unchanged"). Replicated streams are found in the cluster,
not in the job's stream list, so one someone else created is handed over too (a peer
removal needs nothing of the stream's owner). An R1 stream moves only by its placement,
which the job changes for the program's own streams only. So the job stops at once, naming
the stream and the fix, instead of waiting for its deadline, when:

- an R1 stream (a key-value bucket, an object store) that is not the program's has its
  only copy on a retired server: move it (`nats stream edit <stream> --tag <a staying
  server's tag>`) or delete it (`nats stream rm <stream>`), then run `up` again;
- a stream that must move has its only copy(ies) on a retired server that does not run or
  is not reachable (the pod went straight to `retired: true`, skipping `leaving: true`):
  once the stream has been offline (no leader, every listed peer offline) for
  `offline_grace_seconds` (spec, default OFFLINE_GRACE, 30 s). The fix: `leaving: true` on
  that pod instead of `retired: true`, `up` (its server comes back, routed, and the job
  moves the stream), then `retired: true`. The job learns where an offline stream lives from
  `$JS.API.STREAM.LIST`, which lists it (among "missing") with its assigned peers: 2.10.25,
  2.14.6 and 2.15.1 all do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.errors import Error as NatsError

from unityplan_infra.nats.apply_streams import (
    API,
    StreamError,
    connect,
    ensure_streams,
    report,
    request,
)

JSZ_LEADER = "$SYS.REQ.SERVER.PING.JSZ"  # answered, with leader_only, by the meta leader
SERVER_REMOVE = f"{API}.SERVER.REMOVE"
META_STEPDOWN = f"{API}.META.LEADER.STEPDOWN"
PEER_NOT_MEMBER = 10040  # STREAM.PEER.REMOVE: that server holds no replica (any more)
SERVER_NOT_MEMBER = 10044  # SERVER.REMOVE: not in the meta group (any more)
MEMBER_CHANGE_IN_FLIGHT = 10202  # SERVER.REMOVE (2.11+): another removal is being applied
STREAM_NOT_FOUND = 10059
STREAM_OFFLINE = 10118  # no server of the stream's group runs
POLL = 0.25  # s between two looks at the cluster
HANDOVER_DEADLINE = 600.0  # s; a large R1 stream takes as long as its copy over the network
OFFLINE_GRACE = 30.0  # s a stream on retired servers only may be offline before the job stops
LIST_EVERY = 2.0  # s between two STREAM.LIST looks at streams that do not answer
_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

Report = Callable[[dict[str, Any]], None]


class HandOverError(RuntimeError):
    """The hand-over cannot go on, or did not finish in time. `where` names what failed:
    {"stream": name} or {"server": name}."""

    def __init__(self, text: str, **where: str) -> None:
        super().__init__(text)
        self.where = where


def peer_id(server_name: str) -> str:
    """The server's JetStream raft peer ID, as nats-server derives it from the server name
    (server/events.go getHash: 8 characters of base-62 SHA-256). The meta group lists a peer
    by this ID even when no server of that name has been heard from since a restart."""
    digest = hashlib.sha256(server_name.encode()).digest()
    return "".join(_DIGITS[byte % 62] for byte in digest[:8])


# --- what the cluster says ----------------------------------------------------------------
@dataclass(frozen=True)
class StreamPeers:
    """One stream's replica group as its leader reports it (STREAM.INFO)."""

    name: str
    replicas: int
    leader: str  # "" while it has none
    followers: tuple[dict[str, Any], ...]
    messages: int
    last_seq: int
    placement: dict[str, Any] | None = None

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> StreamPeers:
        config, state = info.get("config") or {}, info.get("state") or {}
        group = info.get("cluster") or {}
        return cls(
            name=str(config.get("name", "")),
            replicas=int(config.get("num_replicas") or 1),
            leader=str(group.get("leader") or ""),
            followers=tuple(group.get("replicas") or ()),
            messages=int(state.get("messages", 0)),
            last_seq=int(state.get("last_seq", 0)),
            placement=config.get("placement") or None,
        )

    @property
    def peers(self) -> list[str]:
        return [name for name in (self.leader, *(f.get("name", "") for f in self.followers)) if name]

    def on(self, retired: Iterable[str]) -> list[str]:
        """The retired servers among this stream's peers."""
        gone = set(retired)
        return [peer for peer in self.peers if peer in gone]

    def waiting_for(self, retired: Iterable[str], before: StreamPeers | None = None) -> str:
        """Why the stream is not handed over yet; "" once it is: a leader on a server that
        stays, its full replica count, none on a retired server, every follower current;
        and (`before`: the stream as it was on a retired server) no message lost."""
        retired = set(retired)
        if not self.leader:
            return "no leader"
        if self.leader in retired:
            return f"its leader is {self.leader}"
        if on := self.on(retired):
            return f"a replica is still on {', '.join(on)}"
        if len(self.peers) != self.replicas:
            return f"{len(self.peers)} of {self.replicas} replicas"
        behind = [f.get("name", "?") for f in self.followers if not f.get("current") or f.get("offline")]
        if behind:
            return f"replica not current on {', '.join(behind)}"
        if before is not None and (self.messages < before.messages
                                   or self.last_seq < before.last_seq):  # fmt: skip
            return (f"{self.messages} messages up to sequence {self.last_seq}, had"
                    f" {before.messages} up to {before.last_seq}")  # fmt: skip
        return ""


@dataclass(frozen=True)
class MetaGroup:
    """The JetStream meta group as its leader reports it (JSZ, system account)."""

    leader: str
    members: dict[str, str]  # server name (or peer ID when unknown by name) -> peer ID
    offline: tuple[str, ...] = ()
    behind: tuple[str, ...] = ()

    @classmethod
    def from_jsz(cls, jsz: dict[str, Any]) -> MetaGroup:
        meta = (jsz.get("data") or {}).get("meta_cluster") or {}
        leader = str(meta.get("leader") or "")
        members = {leader: str(meta.get("peer") or peer_id(leader))} if leader else {}
        offline, behind = [], []
        for replica in meta.get("replicas") or []:
            name = str(replica.get("name") or replica.get("peer"))
            members[name] = str(replica.get("peer") or peer_id(name))
            if replica.get("offline"):
                offline.append(name)
            elif not replica.get("current"):
                behind.append(name)
        return cls(leader, members, tuple(offline), tuple(behind))

    def member(self, server: str) -> bool:
        return server in self.members or peer_id(server) in self.members.values()


def too_few_servers(streams: Iterable[StreamPeers], meta: MetaGroup, retired: Sequence[str]) -> str:
    """A reason not to start, or "": a replicated stream with a replica on a retired server
    needs as many servers outside the retired ones as it has replicas."""
    staying = [name for name in meta.members if not any(
        name == server or name == peer_id(server) for server in retired)]  # fmt: skip
    for stream in streams:
        if stream.replicas > 1 and stream.on(retired) and stream.replicas > len(staying):
            return (f"stream {stream.name} has {stream.replicas} replicas but only"
                    f" {len(staying)} servers stay ({', '.join(sorted(staying))}): lower its"
                    " replicas or add a pod before retiring one")  # fmt: skip
    return ""


def _kind(name: str) -> str:
    """How an operator knows the stream: a key-value bucket and an object store are streams."""
    for prefix, kind in (("KV_", "key-value bucket"), ("OBJ_", "object store")):
        if name.startswith(prefix) and len(name) > len(prefix):
            return f" (the {kind} {name[len(prefix):]})"
    return ""


def unmovable(stream: StreamPeers, retired: Sequence[str],
              program: dict[str, dict[str, Any]]) -> str:  # fmt: skip
    """Why an R1 stream whose only copy is on a retired server cannot be moved by the job;
    "" if it can (or need not be). `program`: the spec's streams by name. The job moves an
    R1 stream by giving it a new placement, and only the program's own streams have one in
    the spec: anyone else's stream stays put, and so does one whose placement in the spec is
    the one it has (the stream as it was before the job ensured the streams)."""
    on = stream.on(retired)
    if stream.replicas != 1 or not on or len(on) != len(stream.peers):
        return ""  # replicated (peer removal), not on a retired server, or already moving
    where = f"stream {stream.name}{_kind(stream.name)} has its only copy on {', '.join(on)}"
    desired = program.get(stream.name)
    if desired is None:
        return (f"{where}, and the job moves only the program's own streams: move it to a"
                f" server that stays (`nats stream edit {stream.name} --tag <the tag of a"
                f" server that stays>`) or delete it (`nats stream rm {stream.name}`), then"
                " run `up` again")  # fmt: skip
    if (desired.get("placement") or None) == stream.placement:
        return (f"{where}, and its placement in the job's stream list ({stream.placement})"
                " is the one it has, so nothing moves it: give it a placement that a"
                " server that stays matches, then run `up` again")  # fmt: skip
    return ""


def offline_on_retired(entries: Iterable[dict[str, Any]], retired: Sequence[str]
                       ) -> dict[str, list[str]]:  # fmt: skip
    """Streams without a leader whose copies are only on servers that do not run, a retired
    one among them: {name: those servers}, from STREAM.LIST entries (a stream no server runs
    is listed with its assigned peers, each offline, and no leader). An R1 stream caught in
    its move counts too: its new peer, still catching up, cannot lead alone."""
    found: dict[str, list[str]] = {}
    for entry in entries:
        group, config = entry.get("cluster") or {}, entry.get("config") or {}
        peers = group.get("replicas") or []
        if group.get("leader") or not peers:
            continue
        offline = [_server_name(peer, retired) for peer in peers if peer.get("offline")]
        moving = int(config.get("num_replicas") or 1) == 1
        if set(offline) & set(retired) and (len(offline) == len(peers) or moving):
            found[str(config.get("name", "?"))] = offline
    return found


def _server_name(peer: dict[str, Any], retired: Sequence[str]) -> str:
    """A listed peer's server name (a peer no server of that name was heard from since a
    restart may be listed by its ID)."""
    name = str(peer.get("name") or "")
    for server in retired:
        if name in (server, peer_id(server)) or peer.get("peer") == peer_id(server):
            return server
    return name or str(peer.get("peer") or "?")


def offline_text(name: str, servers: Sequence[str], retired: Sequence[str], seconds: float,
                 program: Iterable[str]) -> str:  # fmt: skip
    """The error for a stream whose only copies are on servers that do not run."""
    gone = ", ".join(server for server in servers if server in retired)
    one = len(servers) == 1
    where = (f"its only copy is on {servers[0]}, which does not run or is not reachable" if one
             else f"its only copies are on {', '.join(servers)}, which do not run or are not"
                  " reachable")  # fmt: skip
    text = (f"stream {name}{_kind(name)}: {where} (the job saw the stream without a leader"
            f" for {seconds:.0f}s), so the job cannot move it. Set `leaving: true` on the"
            f" {'pod' if one else 'pods'} of {gone} instead of `retired: true` and run `up`:"
            f" {'its server comes' if one else 'their servers come'} back, routed, and this"
            " job moves the stream; then set `retired: true` and run `up` again")  # fmt: skip
    if name not in set(program):
        text += (f". It is not one of the program's streams: once its server runs, move it"
                 f" (`nats stream edit {name} --tag <the tag of a server that stays>`) or"
                 f" delete it (`nats stream rm {name}`)")  # fmt: skip
    return text


# --- API calls ------------------------------------------------------------------------------
async def stream_names(nc: Client) -> list[str]:
    names: list[str] = []
    while True:
        page = await request(nc, f"{API}.STREAM.NAMES", {"offset": len(names)})
        if "error" in page:
            raise _Retry(f"stream names: {page['error'].get('description')}")
        batch = page.get("streams") or []
        names.extend(batch)
        if not batch or len(names) >= int(page.get("total", 0)):
            return names


async def stream_list(nc: Client) -> list[dict[str, Any]]:
    """Every stream's STREAM.LIST entry: as its leader reports it, or, for one that no server
    runs, its config and assigned peers (offline) as the meta group knows them."""
    entries: list[dict[str, Any]] = []
    while True:
        page = await request(nc, f"{API}.STREAM.LIST", {"offset": len(entries)})
        if "error" in page:
            raise _Retry(f"stream list: {page['error'].get('description')}")
        batch = page.get("streams") or []
        entries.extend(batch)
        if not batch or len(entries) >= int(page.get("total", 0)):
            return entries


async def stream_peers(nc: Client, name: str, timeout: float = 3.0) -> StreamPeers | None:
    """The stream's group from its leader; None when the stream does not exist."""
    info = await request(nc, f"{API}.STREAM.INFO.{name}", None, timeout)
    error = info.get("error")
    if error and error.get("err_code") == STREAM_NOT_FOUND:
        return None
    if error:
        raise _Retry(f"stream {name}: {error.get('description')} (code {error.get('code')})")
    return StreamPeers.from_info(info)


async def meta_group(sc: Client) -> MetaGroup:
    jsz = await request(sc, JSZ_LEADER, {"leader_only": True}, timeout=1)
    meta = MetaGroup.from_jsz(jsz)
    if not meta.leader:
        raise _Retry("the JetStream meta group has no leader")
    return meta


class _Retry(RuntimeError):
    """A state that may pass with time (no leader yet, a reply lost)."""


TRANSIENT = (_Retry, NatsError, TimeoutError)


async def snapshot(nc: Client) -> dict[str, StreamPeers]:
    """Every stream that answers, before anything changes: an R1 stream on a retired server
    must arrive elsewhere with (at least) the messages it has now. A stream that does not
    answer now is judged later, without its old count."""
    found: dict[str, StreamPeers] = {}
    try:
        names = await stream_names(nc)
    except TRANSIENT:
        return found
    for name in names:
        try:
            stream = await stream_peers(nc, name)
        except TRANSIENT:
            continue
        if stream is not None:
            found[name] = stream
    return found


# --- the hand-over --------------------------------------------------------------------------
REISSUE = 10.0  # s: a peer or server removal that shows no effect by then is sent again
STEPDOWN_EVERY = 3.0  # s between two meta leader step-downs (the election takes its time)


@dataclass
class _Progress:
    started: float = field(default_factory=time.monotonic)
    sent: dict[tuple[str, str], float] = field(default_factory=dict)  # (stream, peer) -> when
    waiting: dict[str, str] = field(default_factory=dict)  # stream -> why not done
    done: set[str] = field(default_factory=set)

    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def due(self, stream: str, what: str) -> bool:
        """True (and noted) unless the same request went out less than REISSUE ago."""
        sent = self.sent.get((stream, what))
        if sent is not None and time.monotonic() - sent < REISSUE:
            return False
        self.sent[(stream, what)] = time.monotonic()
        return True


class OfflineWatch:
    """Streams that live on a retired server and that no server runs, and since when (as
    seen by this job); HandOverError once one has been offline for `grace` seconds."""

    def __init__(self, retired: Sequence[str], grace: float, program: Iterable[str]) -> None:
        self.retired = list(retired)
        self.grace = grace
        self.program = set(program)
        self.since: dict[str, float] = {}
        self.looked = float("-inf")  # monotonic time of the last look

    async def look(self, nc: Client) -> dict[str, list[str]]:
        """One STREAM.LIST: the offline streams on retired servers ({name: its servers})."""
        self.looked = time.monotonic()
        found = offline_on_retired(await stream_list(nc), self.retired)
        now = time.monotonic()
        self.since = {name: self.since.get(name, now) for name in found}
        for name, servers in sorted(found.items()):
            if now - self.since[name] >= self.grace:
                raise HandOverError(offline_text(name, servers, self.retired,
                                                 now - self.since[name], self.program),
                                    stream=name)  # fmt: skip
        return found

    async def wait(self, nc: Client) -> None:
        """Before anything changes: return once no stream on a retired server is offline
        (at once, normally), or stop the job after `grace`. A listing that stops answering
        for that long is left to the steps after (they retry until their deadlines)."""
        answered = time.monotonic()
        while True:
            try:
                if not await self.look(nc):
                    return
                answered = time.monotonic()
            except TRANSIENT:
                if time.monotonic() - answered > self.grace:
                    return
            await asyncio.sleep(1.0)


async def hand_over_streams(
    nc: Client,
    retired: Sequence[str],
    before: dict[str, StreamPeers],
    deadline: float,
    out: Report,
    program: dict[str, dict[str, Any]] | None = None,
    watch: OfflineWatch | None = None,
) -> None:
    """Steps 1 and 2 of the module doc, until every stream with a peer on a retired server
    is handed over; HandOverError at the monotonic `deadline`, or as soon as a stream cannot
    be handed over: an R1 stream not in `program` (the spec's streams by name) on a retired
    server, or one that `watch` finds offline on a retired server for its grace."""
    program = program if program is not None else {}
    watch = watch or OfflineWatch(retired, OFFLINE_GRACE, program)
    progress = _Progress()
    concerned = {name for name, stream in before.items() if stream.on(retired)}
    known = set(before)  # streams that answered at least once
    while True:
        try:
            names: list[str] | None = await stream_names(nc)
        except TRANSIENT as error:
            names = None
            progress.waiting.setdefault("(stream list)", f"{type(error).__name__}: {error}")
        if names is not None:
            progress.waiting.pop("(stream list)", None)
            for name in names:
                if name in progress.done or (name in known and name not in concerned):
                    continue
                try:
                    stream = await stream_peers(nc, name)
                    if stream is not None:
                        known.add(name)
                        if stream.on(retired):
                            concerned.add(name)
                    if stream is None or name not in concerned:
                        concerned.discard(name)
                        progress.waiting.pop(name, None)
                        continue
                    await _act(nc, stream, retired, progress, out, program)
                except TRANSIENT as error:
                    progress.waiting[name] = f"no answer ({type(error).__name__}: {error})"
                    continue
                was = before.get(name)
                was = was if was is not None and was.on(retired) else None
                why = stream.waiting_for(retired, was if stream.replicas == 1 else None)
                if why:
                    progress.waiting[name] = why
                    continue
                progress.waiting.pop(name, None)
                progress.done.add(name)
                moved = stream.replicas == 1 and was is not None
                out({"stream": name, "action": "moved" if moved else "handed-over",
                     "peers": stream.peers, "messages": stream.messages,
                     "from": was.peers if was else None, "seconds": progress.seconds()})  # fmt: skip
            concerned &= set(names)  # a stream deleted meanwhile is no one's concern
            if concerned <= progress.done and known >= set(names):
                return
        # A stream that does not answer, or has no leader: is it one no server runs?
        stuck = [why for why in progress.waiting.values()
                 if why == "no leader" or why.startswith("no answer")]  # fmt: skip
        if stuck and time.monotonic() - watch.looked >= LIST_EVERY:
            with contextlib.suppress(*TRANSIENT):
                await watch.look(nc)
        if time.monotonic() > deadline:
            name, why = min(progress.waiting.items(), default=("?", "no answer"))
            raise HandOverError(_late(name, why, retired, before), stream=name)
        await asyncio.sleep(POLL)


async def _act(
    nc: Client,
    stream: StreamPeers,
    retired: Sequence[str],
    progress: _Progress,
    out: Report,
    program: dict[str, dict[str, Any]],
) -> None:
    """What the job itself does to a stream: a replicated one loses its retired peers; an R1
    stream moves by its placement, on its own (a peer removal would lose its messages), so
    one that is not the program's (no new placement from the job) stops the job at once."""
    if stream.replicas <= 1:
        if stream.name not in program and (reason := unmovable(stream, retired, program)):
            raise HandOverError(reason, stream=stream.name)
        return
    for server in stream.on(retired):
        if not progress.due(stream.name, server):
            continue
        reply = await request(nc, f"{API}.STREAM.PEER.REMOVE.{stream.name}", {"peer": server})
        error = reply.get("error")
        if error and error.get("err_code") != PEER_NOT_MEMBER:
            text = f"removing peer {server}: {error.get('description')}"
            if error.get("code") in (500, 503):
                raise _Retry(text)
            raise HandOverError(f"stream {stream.name}: {text}", stream=stream.name)
        out({"stream": stream.name, "action": "peer-removed", "server": server,
             "seconds": progress.seconds()})  # fmt: skip


def _late(name: str, why: str, retired: Sequence[str], before: dict[str, StreamPeers]) -> str:
    was = before.get(name)
    text = f"stream {name} not handed over from {', '.join(retired)} in time: {why}"
    if was is not None and was.replicas == 1:
        text += (". An R1 stream moves when its placement names a server that stays (the"
                 " program places a leaving pod's TERRITORY stream on the first staying"
                 " pod); its retired server must run, routed (`leaving: true`), to hand its"
                 " messages over")  # fmt: skip
    return text


async def remove_servers(sc: Client, retired: Sequence[str], deadline: float, out: Report) -> None:
    """Step 3 of the module doc, one server after the other."""
    for server in retired:
        started = time.monotonic()
        meta = await _retry(lambda: meta_group(sc), deadline, server)
        if not meta.member(server):
            out({"server": server, "action": "unchanged", "meta_peers": sorted(meta.members)})
            continue
        removal_sent = stepped_down = float("-inf")
        while True:
            try:
                meta = await meta_group(sc)
                if not meta.member(server):
                    break
                now = time.monotonic()
                if meta.leader in retired:
                    # A leader that removes itself leaves the group leaderless until an
                    # election timeout on 2.10 (7 s measured); a step-down hands over at once.
                    if now - stepped_down > STEPDOWN_EVERY:
                        stepped_down = now
                        await request(sc, META_STEPDOWN, None, timeout=2)
                        out({"server": meta.leader, "action": "meta-leader-stepped-down"})
                    await asyncio.sleep(POLL)
                    continue
                if now - removal_sent < REISSUE:
                    await asyncio.sleep(POLL)
                    continue
                removal_sent = now
                reply = await request(sc, SERVER_REMOVE,
                                      {"peer": server, "peer_id": peer_id(server)})  # fmt: skip
                error = reply.get("error")
                if error and error.get("err_code") not in (SERVER_NOT_MEMBER,
                                                           MEMBER_CHANGE_IN_FLIGHT):  # fmt: skip
                    raise HandOverError(
                        f"removing {server} from the JetStream meta group:"
                        f" {error.get('description')} (err_code {error.get('err_code')})",
                        server=server,
                    )
            except TRANSIENT:
                pass
            if time.monotonic() > deadline:
                raise HandOverError(f"{server} still in the JetStream meta group", server=server)
            await asyncio.sleep(POLL)
        out({"server": server, "action": "removed", "meta_peers": sorted(meta.members),
             "meta_offline": list(meta.offline),
             "seconds": round(time.monotonic() - started, 3)})  # fmt: skip


async def _retry(call: Callable[[], Any], deadline: float, server: str) -> Any:
    while True:
        try:
            return await call()
        except TRANSIENT as error:
            if time.monotonic() > deadline:
                raise HandOverError(f"no answer from the JetStream meta group: {error}",
                                    server=server) from error  # fmt: skip
            await asyncio.sleep(POLL)


async def apply_and_retire(spec: dict[str, Any], deadline_seconds: float, out: Report) -> None:
    """The streams job with retired servers: check that the hand-over can succeed, snapshot,
    ensure the streams, hand over, and remove the servers from the meta group."""
    retired = list(spec["retired_servers"])
    if not spec.get("system_user") or not spec.get("system_password"):
        raise HandOverError("retired_servers needs system_user and system_password: only the"
                            " system account may remove a server from the meta group",
                            server=retired[0])  # fmt: skip
    handover = float(spec.get("handover_deadline_seconds") or HANDOVER_DEADLINE)
    grace = float(spec.get("offline_grace_seconds") or OFFLINE_GRACE)
    program = {str(stream["name"]): stream for stream in spec["streams"]}
    nc = await connect(spec["url"], spec["user"], spec["password"])
    try:
        sc = await connect(spec["url"], spec["system_user"], spec["system_password"])
        try:
            deadline = time.monotonic() + handover
            meta = await _retry(lambda: meta_group(sc), deadline, retired[0])
            # A stream whose only copy is on a retired server that does not run can go
            # nowhere: say so now, not after the hand-over deadline.
            watch = OfflineWatch(retired, grace, program)
            await watch.wait(nc)
            before = await snapshot(nc)
            if reason := too_few_servers(before.values(), meta, retired):
                raise HandOverError(reason, server=retired[0])
            for stream in before.values():
                if reason := unmovable(stream, retired, program):
                    raise HandOverError(reason, stream=stream.name)
            try:
                await ensure_streams(nc, spec["streams"], deadline_seconds,
                                     lambda name, action: out({"stream": name, "action": action}))  # fmt: skip
            except StreamError as error:
                if f"err_code {STREAM_OFFLINE}" in str(error):
                    raise HandOverError(
                        f"{error}. No server of its group runs; if one is a retired one"
                        f" ({', '.join(retired)}), set `leaving: true` on its pod instead of"
                        " `retired: true` and run `up` (its server comes back, routed, and"
                        " this job moves the stream), then `retired: true`",
                        stream=error.stream or "",
                    ) from error
                raise
            await hand_over_streams(nc, retired, before, deadline, out, program, watch)
            await remove_servers(sc, retired, deadline, out)
        finally:
            await sc.close()
    finally:
        await nc.close()


def run(spec: dict[str, Any], deadline_seconds: float) -> int:
    """The job's retire mode: 0 when done, 1 after one error line."""
    try:
        asyncio.run(apply_and_retire(spec, deadline_seconds, report))
    except StreamError as error:
        report({"stream": error.stream, "error": str(error)})
        return 1
    except HandOverError as error:
        report({**error.where, "error": str(error)})
        return 1
    return 0
