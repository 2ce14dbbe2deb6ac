"""The rollout gate: wait until one NATS server is back and JetStream-current.

Part of the stream job (standard library and nats-py only; apply_streams.py says how it
runs). A rolling upgrade replaces one pod's nats-server at a time; the next one may stop only
once this one has caught up, or a replicated stream (GLOBAL_EVENTS, R3) loses its quorum
and writes stall for a whole election (tests/realsw/test_nats_rolling_upgrade.py measured
4-8 s). The gate needs only the client account, over the server's client port (the
monitoring ports are not reachable across hosts in the multi-host layout). It passes when,
in one look:

- the server accepts a client connection at the given URL, and it is the named server (the
  `server_name` of the connection's INFO);
- JetStream answers through it (`$JS.API.INFO`);
- every stream has a leader, and every replicated stream's LEADER (STREAM.INFO is answered by
  it; a follower's own view of its peers can be stale) reports its full replica count, all
  current, none offline: so every replica on the restarted server has caught up;
- and each leader heard from the server's replica after the gate connected to the server:
  a server restarted within a heartbeat is not missed by its stream leaders yet, which still
  report its replica (of the stopped process) current. Measured on a 2.14.6 -> 2.15.1 roll:
  without this the gate passed 0.27 s after a restart while the leader still counted the
  old process;
- the server is a peer of each stream in `peer_of` (optional; e.g. the pod's own TERRITORY
  stream, and GLOBAL_EVENTS when it has a replica on every server).

What the client account cannot see is the JetStream meta group. A restarted server's stream
replicas catch up from its own store and their leaders within ~0.1-0.7 s, its meta group
membership only later (/healthz: "JetStream has not established contact with a meta leader",
up to ~2.5 s after the start in the rolls measured); `$JS.API.INFO` does not tell, since a
server without a meta leader stays silent for its first 10 s and the meta leader answers for
it. Rolling on then risks nothing for writes (stream groups are separate raft groups), but
stopping the next server may leave the meta group (stream and consumer management, not
publishing) without a leader for an election: in 5 rolls 2.10.25 -> 2.15.1 with the client
account only, 8 of 15 steps moved on before the server's /healthz was 200, and 3 times the
next gate then waited 5.0-7.6 s for a meta leader. With the system account's user in the spec
("system_user", "system_password" at the top level, as for a retirement) the gate also
waits until the meta leader (JSZ, leader_only) reports every peer current, none offline,
and the named server heard from since the gate connected: the same as /healthz plus the
rolling-upgrade test's "healthz+replicas", without the monitoring port. No look runs without
that user's connection: one that failed is retried together with the client's (the
staleness checks count from the client connection), so the gate never passes unchecked; and
a user the server refuses (a wrong password) fails the gate after REFUSED_FOR, saying which.

Spec (apply_streams.py): {"url", "user", "password", "system_user"?, "system_password"?,
"gate": {"server": <server name>, "url": <its client URL, default the top-level url>,
"deadline_seconds": 300, "peer_of": [...]}}. Exit 0 with {"gate": server, "action":
"passed", ...}; exit 1 with {"gate": server, "error": "...what the last look found..."} when
the deadline passes, or once a user of the spec has been refused for REFUSED_FOR (10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError

from unityplan_infra.nats.apply_streams import API, report, request

JSZ_LEADER = "$SYS.REQ.SERVER.PING.JSZ"  # with leader_only: answered by the meta leader
DEADLINE = 300.0  # s, unless the spec says otherwise
POLL = 0.25  # s between two looks
REQUEST_TIMEOUT = 2.0
# s: a user the server keeps refusing (a wrong password in the spec) fails the gate then,
# not at the deadline; a server that has just restarted with its config refuses nobody.
REFUSED_FOR = 10.0


class GateError(RuntimeError):
    """The server was not back and JetStream-current by the deadline."""


def stream_problem(
    info: dict[str, Any], server: str, must_be_peer: bool, connected_for: float = float("inf")
) -> str:
    """Why one stream (its STREAM.INFO reply) keeps the gate closed; "" if it does not.
    `connected_for`: seconds since the gate's connection to `server` came up; the leader must
    have heard from `server`'s replica within that time (not from the process before)."""
    if error := info.get("error"):
        return f"{error.get('description')} (code {error.get('code')})"
    config = info.get("config") or {}
    group = info.get("cluster") or {}
    replicas = int(config.get("num_replicas") or 1)
    leader = group.get("leader") or ""
    if not leader:
        return "no leader"
    followers = group.get("replicas") or []
    peers = [leader, *(f.get("name", "?") for f in followers)]
    if must_be_peer and server not in peers:
        return f"{server} is not among its peers {peers}"
    if replicas > 1:
        if len(peers) != replicas:
            return f"{len(peers)} of {replicas} replicas"
        offline = [f.get("name", "?") for f in followers if f.get("offline")]
        if offline:
            return f"replica offline on {', '.join(offline)} (leader {leader})"
        behind = [f.get("name", "?") for f in followers if not f.get("current")]
        if behind:
            return f"replica not current on {', '.join(behind)} (leader {leader})"
        return _stale(followers, server, leader, connected_for)
    return ""


def _stale(peers: Sequence[dict[str, Any]], server: str, leader: str, connected_for: float) -> str:
    """"" unless `leader` last heard from `server` (among `peers`, as the leader lists them)
    before the gate's connection to it came up, `connected_for` seconds ago."""
    for peer in peers:
        if peer.get("name") != server:
            continue
        heard = int(peer.get("active", -1)) / 1e9  # ns since the leader heard from it
        if heard < 0 or heard >= connected_for:
            return (f"{leader} last heard from {server} {heard:.3f}s ago, before the server"
                    " was back")  # fmt: skip
    return ""


def meta_problem(jsz: dict[str, Any], server: str, connected_for: float = float("inf")) -> str:
    """Why the meta group (its leader's JSZ reply) keeps the gate closed; "" if it does not:
    a leader, the named server a member, every peer current, none offline, and the named
    server heard from since the gate connected to it."""
    meta = (jsz.get("data") or {}).get("meta_cluster") or {}
    leader = meta.get("leader") or ""
    if not leader:
        return "meta group: no leader"
    peers = meta.get("replicas") or []
    if server != leader and server not in [peer.get("name") for peer in peers]:
        return f"meta group: {server} is not a member"
    offline = [peer.get("name", "?") for peer in peers if peer.get("offline")]
    if offline:
        return f"meta group: {', '.join(offline)} offline (leader {leader})"
    behind = [peer.get("name", "?") for peer in peers if not peer.get("current")]
    if behind:
        return f"meta group: {', '.join(behind)} not current (leader {leader})"
    if stale := _stale(peers, server, leader, connected_for):
        return f"meta group: {stale}"
    return ""


async def _quiet(error: Exception) -> None:
    """nats-py's default prints a traceback per failed connect; the gate says it once."""


class Refused(NatsError):
    """The server refused a user of the spec (a wrong password), as opposed to no answer."""


async def _connect(url: str, user: str, password: str, role: str = "client") -> Client:
    # Bounded: a refused connect is retried by the gate's own loop, not by nats-py.
    connecting = nats.connect(
        servers=[url], user=user, password=password, connect_timeout=2, error_cb=_quiet,
        allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0,
    )  # fmt: skip
    try:
        return await asyncio.wait_for(connecting, 5)
    except NatsError as error:
        text = str(error).lower()
        if "authorization violation" in text or "authentication" in text:
            raise Refused(f"the {role} user {user!r} is refused at {url} ({error}): check its"
                          " password in the spec") from error  # fmt: skip
        raise


async def look(
    nc: Client,
    server: str,
    peer_of: Sequence[str],
    connected_at: float,
    sc: Client | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """One look through a connection to the server, up since the monotonic `connected_at`
    (and `sc`, the system user's, for the meta group): (problems, what passed)."""
    connected_to = str(getattr(nc, "_server_info", {}).get("server_name", ""))
    if connected_to != server:
        return [f"the URL reaches {connected_to or 'an unnamed server'}, not {server}"], {}
    if sc is not None:
        jsz = await request(sc, JSZ_LEADER, {"leader_only": True}, REQUEST_TIMEOUT)
        if problem := meta_problem(jsz, server, time.monotonic() - connected_at):
            return [problem], {}
    account = await request(nc, f"{API}.INFO", None, REQUEST_TIMEOUT)
    if error := account.get("error"):
        return [f"JetStream: {error.get('description')} (code {error.get('code')})"], {}
    names: list[str] = []
    while True:
        page = await request(nc, f"{API}.STREAM.NAMES", {"offset": len(names)}, REQUEST_TIMEOUT)
        if error := page.get("error"):
            return [f"stream names: {error.get('description')}"], {}
        batch = page.get("streams") or []
        names.extend(batch)
        if not batch or len(names) >= int(page.get("total", 0)):
            break
    problems: list[str] = []
    missing = sorted(set(peer_of) - set(names))
    if missing:
        problems.append(f"no stream {', '.join(missing)}")
    peer_in: list[str] = []
    for name in sorted(names):
        try:
            info = await request(nc, f"{API}.STREAM.INFO.{name}", None, REQUEST_TIMEOUT)
        except (TimeoutError, NatsError) as error:
            problems.append(f"{name}: no answer ({type(error).__name__})")
            continue
        connected_for = time.monotonic() - connected_at
        if problem := stream_problem(info, server, name in peer_of, connected_for):
            problems.append(f"{name}: {problem}")
            continue
        group = info.get("cluster") or {}
        peers = [group.get("leader"), *(f.get("name") for f in group.get("replicas") or [])]
        if server in peers:
            peer_in.append(name)
    return problems, {"streams": len(names), "peer_of": peer_in, "meta": sc is not None}


async def wait_gate(
    server: str,
    url: str,
    user: str,
    password: str,
    *,
    deadline_seconds: float = DEADLINE,
    peer_of: Sequence[str] = (),
    system: tuple[str, str] | None = None,
    on_look: Callable[[list[str]], None] | None = None,
) -> dict[str, Any]:
    """Look until one look passes (the record to report) or the deadline (GateError with the
    last look's problems). `system`: (user, password) of the system account: check the meta
    group too; then no look runs without the system user's connection (a look without it
    would pass without the meta group check), and a refused user fails the gate once
    refused for REFUSED_FOR."""
    started = time.monotonic()
    deadline = started + deadline_seconds
    nc: Client | None = None
    sc: Client | None = None
    connected_at = 0.0
    problems: list[str] = ["not looked yet"]
    refused_since: float | None = None  # monotonic: since when a user is refused
    looks = 0
    try:
        while True:
            looks += 1
            try:
                if (
                    nc is None
                    or not nc.is_connected
                    or (system is not None and (sc is None or not sc.is_connected))
                ):
                    await _close(nc, sc)
                    nc = sc = None
                    nc = await _connect(url, user, password, "client")
                    # Each leader must have heard from the server since this connection came
                    # up (the staleness check), however long the system user's takes.
                    connected_at = time.monotonic()
                    if system is not None:
                        sc = await _connect(url, *system, "system")
                problems, passed = await look(nc, server, peer_of, connected_at, sc)
                refused_since = None
            except Refused as refused:
                problems = [str(refused)]
                refused_since = refused_since or time.monotonic()
            except (TimeoutError, NatsError, OSError) as error:
                problems = [f"no answer at {url}: {type(error).__name__} {error}".rstrip()]
                refused_since = None
            if on_look is not None:
                on_look(problems)
            if not problems:
                return {"gate": server, "action": "passed", **passed, "looks": looks,
                        "seconds": round(time.monotonic() - started, 3)}  # fmt: skip
            now = time.monotonic()
            if refused_since is not None and now - refused_since >= REFUSED_FOR:
                raise GateError(f"{server}: {'; '.join(problems)}, for"
                                f" {now - refused_since:.1f}s ({looks} looks)")  # fmt: skip
            if now > deadline:
                raise GateError(
                    f"{server} not back and JetStream-current within {deadline_seconds:g}s"
                    f" ({looks} looks); last: {'; '.join(problems)}"
                )
            await asyncio.sleep(POLL)
    finally:
        await _close(nc, sc)


async def _close(*clients: Client | None) -> None:
    for client in clients:
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


def _ignore_reset_reads(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A server that refuses a user closes the connection, and nats-py leaves the read that
    saw the reset in a future nobody awaits: asyncio would print its traceback into the
    deploy's log ("Future exception was never retrieved"). The gate reports the refusal
    itself; anything else goes to asyncio's default handler."""
    if isinstance(context.get("exception"), ConnectionResetError):
        return
    loop.default_exception_handler(context)


async def _quietly(gate: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    asyncio.get_running_loop().set_exception_handler(_ignore_reset_reads)
    return await gate


def run(spec: dict[str, Any]) -> int:
    """The job's gate mode: 0 once the gate passed, 1 after one error line."""
    gate = spec["gate"]
    server = str(gate["server"])
    try:
        passed = asyncio.run(_quietly(wait_gate(
            server, str(gate.get("url") or spec["url"]), spec["user"], spec["password"],
            deadline_seconds=float(gate.get("deadline_seconds") or DEADLINE),
            peer_of=list(gate.get("peer_of") or ()),
            system=(spec["system_user"], spec["system_password"])
            if spec.get("system_user") and spec.get("system_password") else None,
        )))  # fmt: skip
    except GateError as error:
        report({"gate": server, "error": str(error)})
        return 1
    report(passed)
    return 0
