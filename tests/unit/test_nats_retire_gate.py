"""The pure parts of the stream job's retire and gate modes: how they judge what the cluster
reports, and the job's clear failures before it touches a server. What the servers really
do is proven on real nats-server processes (tests/realsw/test_nats_retire.py,
tests/realsw/test_rollout_gate.py); the replies here have the shape those servers sent."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from tests.support.jetstream_bed import free_ports
from unityplan_infra.nats import gate
from unityplan_infra.nats.gate import GateError, meta_problem, stream_problem, wait_gate
from unityplan_infra.nats.retire import (
    MetaGroup,
    StreamPeers,
    offline_on_retired,
    offline_text,
    peer_id,
    too_few_servers,
    unmovable,
)
from unityplan_infra.render.stream_job import JOB_FILE, build_stream_job

SE, DK, NO, FI = (f"service-nats-{code}" for code in ("se", "dk", "no", "fi"))


def info(name: str, replicas: int, leader: str, *followers: tuple[str, bool],
         messages: int = 10, offline: tuple[str, ...] = (),
         placement: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """A STREAM.INFO reply as nats-server 2.10/2.15 sends it (the fields read here)."""
    group: dict[str, Any] = {"name": "unityplan-global", "leader": leader}
    if followers:
        group["replicas"] = [
            {"name": peer, "current": current, "active": 1000, "peer": peer_id(peer),
             **({"offline": True} if peer in offline else {})}
            for peer, current in followers
        ]  # fmt: skip
    config: dict[str, Any] = {"name": name, "num_replicas": replicas}
    if placement is not None:
        config["placement"] = placement
    return {"config": config, "state": {"messages": messages, "last_seq": messages},
            "cluster": group}  # fmt: skip


def test_peer_ids_are_nats_servers_own() -> None:
    """The IDs nats-server 2.10.25 and 2.15.1 listed in /jsz for the dev stack's servers."""
    assert [peer_id(name) for name in (DK, NO, SE, FI)] == [
        "pYDYGPB6", "MGlgeJR2", "qRVJGiU8", "rMh7R44t"
    ]  # fmt: skip


def test_a_replicated_stream_is_handed_over_once_full_and_current_elsewhere() -> None:
    retired = [SE]
    on_se = StreamPeers.from_info(info("GLOBAL_EVENTS", 3, SE, (DK, True), (NO, True)))
    assert on_se.on(retired) == [SE]
    assert on_se.waiting_for(retired) == f"its leader is {SE}"
    removed = StreamPeers.from_info(info("GLOBAL_EVENTS", 3, DK, (NO, True)))
    assert removed.waiting_for(retired) == "2 of 3 replicas"
    catching_up = StreamPeers.from_info(info("GLOBAL_EVENTS", 3, DK, (NO, True), (FI, False)))
    assert catching_up.waiting_for(retired) == f"replica not current on {FI}"
    done = StreamPeers.from_info(info("GLOBAL_EVENTS", 3, DK, (NO, True), (FI, True)))
    assert done.waiting_for(retired) == ""
    assert StreamPeers.from_info(info("X", 3, "")).waiting_for(retired) == "no leader"


def test_an_r1_stream_is_moved_once_alone_elsewhere_with_all_its_messages() -> None:
    retired = [SE]
    before = StreamPeers.from_info(info("TERRITORY_SE", 1, SE, messages=1290))
    # During the move the group has both servers; the old one may still lead.
    moving = StreamPeers.from_info(info("TERRITORY_SE", 1, DK, (SE, True), messages=1290))
    assert moving.waiting_for(retired, before) == f"a replica is still on {SE}"
    short = StreamPeers.from_info(info("TERRITORY_SE", 1, DK, messages=1200))
    assert "1200 messages" in short.waiting_for(retired, before)
    moved = StreamPeers.from_info(info("TERRITORY_SE", 1, DK, messages=1290))
    assert moved.waiting_for(retired, before) == ""


def test_meta_group_from_the_leaders_jsz() -> None:
    jsz = {"server": {"name": NO}, "data": {"meta_cluster": {
        "name": "unityplan-global", "leader": NO, "peer": peer_id(NO), "cluster_size": 4,
        "replicas": [{"name": DK, "current": True, "peer": peer_id(DK)},
                     {"name": FI, "current": False, "peer": peer_id(FI)},
                     # a peer no server of that name was heard from: listed by its ID
                     {"name": peer_id(SE), "current": False, "offline": True,
                      "peer": peer_id(SE)}],
    }}}  # fmt: skip
    meta = MetaGroup.from_jsz(jsz)
    assert meta.leader == NO
    assert set(meta.members) == {NO, DK, FI, peer_id(SE)}
    assert meta.member(SE) and meta.member(DK) and not meta.member("service-nats-xx")
    assert (meta.offline, meta.behind) == ((peer_id(SE),), (FI,))


def test_no_hand_over_without_enough_servers_for_the_replicas() -> None:
    streams = [StreamPeers.from_info(info("GLOBAL_EVENTS", 3, SE, (DK, True), (NO, True)))]
    three = MetaGroup(DK, {DK: peer_id(DK), NO: peer_id(NO), SE: peer_id(SE)})
    reason = too_few_servers(streams, three, [SE])
    assert "GLOBAL_EVENTS has 3 replicas but only 2 servers stay" in reason
    four = MetaGroup(DK, {**three.members, FI: peer_id(FI)})
    assert too_few_servers(streams, four, [SE]) == ""


def test_an_r1_stream_the_job_cannot_move_is_named_with_the_fix() -> None:
    """The job moves an R1 stream only by the new placement the program gives it."""
    retired = [SE]
    program = {"TERRITORY_SE": {"name": "TERRITORY_SE", "placement": {"tags": ["territory:dk"]}}}
    on_se = {"tags": ["territory:se"]}
    # The program's stream with a new placement: it moves; so it does while it moves.
    assert unmovable(StreamPeers.from_info(info("TERRITORY_SE", 1, SE, placement=on_se)),
                     retired, program) == ""  # fmt: skip
    moving = info("TERRITORY_SE", 1, SE, (DK, False), placement={"tags": ["territory:dk"]})
    assert unmovable(StreamPeers.from_info(moving), retired, program) == ""
    # Anyone else's: a bucket, a stream.
    bucket = unmovable(StreamPeers.from_info(info("KV_settings", 1, SE, placement=on_se)),
                       retired, program)  # fmt: skip
    assert bucket == (
        f"stream KV_settings (the key-value bucket settings) has its only copy on {SE}, and"
        " the job moves only the program's own streams: move it to a server that stays (`nats"
        " stream edit KV_settings --tag <the tag of a server that stays>`) or delete it (`nats"
        " stream rm KV_settings`), then run `up` again"
    )
    assert unmovable(StreamPeers.from_info(info("AUDIT", 1, SE)), retired, program).startswith(
        f"stream AUDIT has its only copy on {SE}, and the job moves only the program's own")
    # The program's stream whose placement the job would not change.
    stays = {"TERRITORY_SE": {"name": "TERRITORY_SE", "placement": on_se}}
    assert "is the one it has, so nothing moves it" in unmovable(
        StreamPeers.from_info(info("TERRITORY_SE", 1, SE, placement=on_se)), retired, stays)
    # Not the job's concern: elsewhere, or replicated (a peer removal hands it over).
    assert unmovable(StreamPeers.from_info(info("AUDIT", 1, DK)), retired, program) == ""
    replicated = info("AUDIT", 3, SE, (DK, True), (NO, True))
    assert unmovable(StreamPeers.from_info(replicated), retired, program) == ""


def listed(name: str, leader: str, *replicas: dict[str, Any]) -> dict[str, Any]:
    """A STREAM.LIST entry as 2.10.25, 2.14.6 and 2.15.1 sent it; one no server runs has
    no leader and its assigned peers, offline."""
    group: dict[str, Any] = {"name": "unityplan-global", "replicas": list(replicas)}
    if leader:
        group["leader"] = leader
    return {"config": {"name": name, "num_replicas": max(1, len(replicas) + bool(leader))},
            "cluster": group}  # fmt: skip


def test_a_stream_no_server_runs_is_found_on_its_retired_server() -> None:
    gone = {"name": SE, "current": False, "offline": True, "active": 0, "peer": peer_id(SE)}
    by_id = {"name": peer_id(SE), "current": False, "offline": True, "peer": peer_id(SE)}
    entries = [
        listed("GLOBAL_EVENTS", NO, {"name": DK, "current": True, "peer": peer_id(DK)}, gone),
        listed("TERRITORY_DK", DK),
        listed("TERRITORY_SE", "", gone),
        listed("KV_settings", "", by_id),  # listed by its peer ID
        listed("TERRITORY_NO", "", {"name": NO, "offline": True, "peer": peer_id(NO)}),
        # replicated, electing: not stuck on se
        listed("ELECTING", "", gone, {"name": DK, "current": True, "peer": peer_id(DK)},
               {"name": NO, "current": True, "peer": peer_id(NO)}),
    ]  # fmt: skip
    # An R1 stream whose move stopped with se: its new peer cannot lead alone.
    moving = listed("TERRITORY_XX", "", gone, {"name": DK, "current": False, "peer": peer_id(DK)})
    moving["config"]["num_replicas"] = 1
    entries.append(moving)
    assert offline_on_retired(entries, [SE]) == {"TERRITORY_SE": [SE], "KV_settings": [SE],
                                                 "TERRITORY_XX": [SE]}  # fmt: skip
    assert offline_on_retired(entries, [FI]) == {}


def test_the_offline_error_says_what_to_do() -> None:
    text = offline_text("TERRITORY_SE", [SE], [SE], 30.2, ["TERRITORY_SE"])
    assert text == (
        f"stream TERRITORY_SE: its only copy is on {SE}, which does not run or is not"
        " reachable (the job saw the stream without a leader for 30s), so the job cannot"
        f" move it. Set `leaving: true` on the pod of {SE} instead of `retired: true` and run"
        " `up`: its server comes back, routed, and this job moves the stream; then set"
        " `retired: true` and run `up` again"
    )
    both = offline_text("AUDIT", [SE, FI], [SE, FI], 30, ["AUDIT"])
    assert both.startswith(f"stream AUDIT: its only copies are on {SE}, {FI}, which do not run"
                           " or are not reachable")  # fmt: skip
    assert f"Set `leaving: true` on the pods of {SE}, {FI} instead of" in both
    foreign = offline_text("KV_settings", [SE], [SE], 30, ["TERRITORY_SE"])
    assert foreign.startswith("stream KV_settings (the key-value bucket settings): its only")
    assert foreign.endswith("It is not one of the program's streams: once its server runs,"
                            " move it (`nats stream edit KV_settings --tag <the tag of a"
                            " server that stays>`) or delete it (`nats stream rm"
                            " KV_settings`)")  # fmt: skip


def test_gate_judges_each_stream_by_its_leaders_view() -> None:
    assert stream_problem(info("GLOBAL_EVENTS", 3, DK, (NO, True), (SE, True)), SE, True) == ""
    assert stream_problem(info("GLOBAL_EVENTS", 3, DK, (NO, True), (SE, False)), SE, False) == (
        f"replica not current on {SE} (leader {DK})"
    )
    offline = info("GLOBAL_EVENTS", 3, DK, (NO, True), (SE, False), offline=(SE,))
    assert stream_problem(offline, SE, False) == f"replica offline on {SE} (leader {DK})"
    assert stream_problem(info("GLOBAL_EVENTS", 3, DK, (NO, True)), SE, False) == "2 of 3 replicas"
    assert stream_problem(info("TERRITORY_SE", 1, ""), SE, False) == "no leader"
    assert stream_problem(info("TERRITORY_DK", 1, DK), SE, False) == ""
    assert stream_problem(info("TERRITORY_DK", 1, DK), SE, True) == (
        f"{SE} is not among its peers ['{DK}']"
    )
    unavailable = {"error": {"code": 503, "err_code": 10008,
                             "description": "JetStream system temporarily unavailable"}}  # fmt: skip
    assert "temporarily unavailable (code 503)" in stream_problem(unavailable, SE, False)


def test_gate_wants_the_leader_to_have_heard_from_the_restarted_server_since() -> None:
    """A leader that has not noticed a quick restart still counts the old process's replica
    current; only contact after the gate's connection came up counts."""
    reply = info("GLOBAL_EVENTS", 3, DK, (NO, True), (SE, True))  # "active": 1000 ns ago
    assert stream_problem(reply, SE, True, connected_for=0.5) == ""
    reply["cluster"]["replicas"][1]["active"] = 800_000_000  # 0.8 s ago
    assert stream_problem(reply, SE, True, connected_for=0.5) == (
        f"{DK} last heard from {SE} 0.800s ago, before the server was back"
    )
    assert stream_problem(reply, NO, False, connected_for=0.5) == ""  # only the named server


def jsz(leader: str, *replicas: dict[str, Any]) -> dict[str, Any]:
    return {"data": {"meta_cluster": {"leader": leader, "peer": peer_id(leader),
                                      "replicas": list(replicas)}}}  # fmt: skip


def test_gate_meta_group_check() -> None:
    def peer(name: str, current: bool = True, active: int = 1000, **more: Any) -> dict[str, Any]:
        return {"name": name, "current": current, "active": active, "peer": peer_id(name), **more}

    assert meta_problem(jsz(DK, peer(NO), peer(SE)), SE, 0.5) == ""
    assert meta_problem(jsz(SE, peer(NO), peer(DK)), SE, 0.5) == ""  # the leader itself
    assert meta_problem(jsz(""), SE) == "meta group: no leader"
    assert meta_problem(jsz(DK, peer(NO)), SE) == f"meta group: {SE} is not a member"
    assert meta_problem(jsz(DK, peer(NO), peer(SE, False)), SE) == (
        f"meta group: {SE} not current (leader {DK})"
    )
    assert meta_problem(jsz(DK, peer(NO, False, offline=True), peer(SE)), SE) == (
        f"meta group: {NO} offline (leader {DK})"
    )
    assert meta_problem(jsz(DK, peer(NO), peer(SE, active=2_000_000_000)), SE, 0.5) == (
        f"meta group: {DK} last heard from {SE} 2.000s ago, before the server was back"
    )


# --- the gate's connections -------------------------------------------------------------------
class FakeClient:
    """What wait_gate asks of a connection (look is replaced)."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.is_connected = True

    async def close(self) -> None:
        self.is_connected = False


def test_gate_retries_a_failed_system_connection_with_the_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The system user's connection fails once (a timeout, a refused connect): no look may
    run without it (it would pass without the meta group check), and the staleness checks
    count from the client connection that comes with it, never from 0."""
    events: list[tuple[str, str, float]] = []
    looks: list[tuple[Any, float]] = []

    async def connect(url: str, user: str, password: str, *more: str) -> FakeClient:
        role = "system" if user == "sys" else "client"
        events.append((role, "start", time.monotonic()))
        if role == "system" and [e[:2] for e in events].count(("system", "start")) == 1:
            raise nats.errors.TimeoutError
        await asyncio.sleep(0.01)
        events.append((role, "up", time.monotonic()))
        return FakeClient(user)

    async def look(nc: FakeClient, server: str, peer_of: Any, connected_at: float,
                   sc: FakeClient | None = None) -> tuple[list[str], dict[str, Any]]:  # fmt: skip
        looks.append((sc, connected_at))
        return [], {"meta": sc is not None}

    monkeypatch.setattr(gate, "_connect", connect)
    monkeypatch.setattr(gate, "look", look)
    monkeypatch.setattr(gate, "POLL", 0.01)
    passed = asyncio.run(wait_gate(DK, "nats://x:4222", "unityplan", "pw", deadline_seconds=5,
                                   system=("sys", "spw")))  # fmt: skip
    assert passed["meta"] is True and passed["looks"] == 2, passed
    ((sc, connected_at),) = looks
    assert sc is not None and sc.user == "sys"
    # The second round: the client again, then the system user; connected_at in between.
    client_up = [at for role, what, at in events if (role, what) == ("client", "up")]
    system_start = [at for role, what, at in events if (role, what) == ("system", "start")]
    assert len(client_up) == 2 and len(system_start) == 2, events
    assert client_up[1] <= connected_at <= system_start[1], (events, connected_at)


def test_gate_fails_clearly_when_the_system_user_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong system password: the gate says so and fails (after REFUSED_FOR), and never
    passes without the meta group check."""

    async def connect(*, servers: list[str], user: str, **options: Any) -> FakeClient:
        if user == "sys":
            raise nats.errors.Error("nats: 'Authorization Violation'")
        return FakeClient(user)

    async def look(*args: Any, **kwargs: Any) -> tuple[list[str], dict[str, Any]]:
        raise AssertionError("looked without the system user's connection")

    monkeypatch.setattr(nats, "connect", connect)
    monkeypatch.setattr(gate, "look", look)
    monkeypatch.setattr(gate, "POLL", 0.01)
    monkeypatch.setattr(gate, "REFUSED_FOR", 0.2, raising=False)
    with pytest.raises(GateError) as failed:
        asyncio.run(wait_gate(DK, "nats://x:4222", "unityplan", "pw", deadline_seconds=30,
                              system=("sys", "wrong")))  # fmt: skip
    assert str(failed.value).startswith(
        f"{DK}: the system user 'sys' is refused at nats://x:4222 (nats: 'Authorization"
        " Violation'): check its password in the spec, for 0."), failed.value


# --- the archive's failures, before it touches a server --------------------------------------
def run_archive(tmp_path: Path, spec: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    path = tmp_path / JOB_FILE
    path.write_bytes(build_stream_job().archive)
    result = subprocess.run([sys.executable, "-I", "-S", str(path)], input=json.dumps(spec),
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


def test_gate_gives_up_at_its_deadline_saying_what_it_saw(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    url = f"nats://127.0.0.1:{port}"
    spec = {"url": url, "user": "unityplan", "password": "x",
            "gate": {"server": DK, "deadline_seconds": 1}}  # fmt: skip
    code, lines = run_archive(tmp_path, spec)
    assert code == 1
    (line,) = lines
    assert line["gate"] == DK
    assert line["error"].startswith(f"{DK} not back and JetStream-current within 1s")
    assert f"no answer at {url}" in line["error"]


def test_retiring_needs_the_system_user(tmp_path: Path) -> None:
    spec = {"url": "nats://127.0.0.1:1", "user": "unityplan", "password": "x", "streams": [],
            "retired_servers": [SE]}  # fmt: skip
    code, lines = run_archive(tmp_path, spec)
    assert code == 1
    assert lines == [{"server": SE, "error": "retired_servers needs system_user and"
                      " system_password: only the system account may remove a server from"
                      " the meta group"}]  # fmt: skip
