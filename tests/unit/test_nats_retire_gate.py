"""The pure parts of the stream job's retire and gate modes: how they judge what the cluster
reports, and the job's clear failures before it touches a server. What the servers really
do is proven on real nats-server processes (tests/realsw/test_nats_retire.py,
tests/realsw/test_rollout_gate.py); the replies here have the shape those servers sent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.jetstream_bed import free_ports
from unityplan_infra.nats.gate import meta_problem, stream_problem
from unityplan_infra.nats.retire import MetaGroup, StreamPeers, peer_id, too_few_servers
from unityplan_infra.render.stream_job import JOB_FILE, build_stream_job

SE, DK, NO, FI = (f"service-nats-{code}" for code in ("se", "dk", "no", "fi"))


def info(name: str, replicas: int, leader: str, *followers: tuple[str, bool],
         messages: int = 10, offline: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """A STREAM.INFO reply as nats-server 2.10/2.15 sends it (the fields read here)."""
    group: dict[str, Any] = {"name": "unityplan-global", "leader": leader}
    if followers:
        group["replicas"] = [
            {"name": peer, "current": current, "active": 1000, "peer": peer_id(peer),
             **({"offline": True} if peer in offline else {})}
            for peer, current in followers
        ]  # fmt: skip
    return {"config": {"name": name, "num_replicas": replicas},
            "state": {"messages": messages, "last_seq": messages}, "cluster": group}  # fmt: skip


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
