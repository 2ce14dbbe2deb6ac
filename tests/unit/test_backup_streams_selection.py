"""Which JetStream streams a pod's backup snapshots (backup/jetstream.py, issue 10).

Each pod backs up the streams its own server holds; a replicated stream (GLOBAL_EVENTS) is the
same data on every replica and is backed up once for the mesh, by the first pod. The infos
below have the shape STREAM.INFO / STREAM.LIST return (as nats-server 2.10 sends them,
offline peers included); the live cluster's own infos are checked in
tests/realsw/test_backup_jetstream.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.deployments import dev_deployment, multi_host_deployment, nordic_deployment
from unityplan_infra.backup.jetstream import nats_server_name, streams_to_back_up


def info(
    name: str, replicas: int, leader: str | None, *followers: str, **extra: Any
) -> dict[str, Any]:
    """A stream info; `leader` and `followers` are pod codes (None: no leader right now)."""
    cluster: dict[str, Any] = {"name": "unityplan-global"}
    if leader:
        cluster["leader"] = nats_server_name(leader)
    if followers:
        cluster["replicas"] = [
            {"name": nats_server_name(code), "current": True, "peer": code.upper()}
            for code in followers
        ]
    return {"config": {"name": name, "num_replicas": replicas, "storage": "file"},
            "state": {"messages": 3}, "cluster": cluster, **extra}  # fmt: skip


GLOBAL = info("GLOBAL_EVENTS", 3, "no", "dk", "se")
MESH = [GLOBAL, info("TERRITORY_DK", 1, "dk"), info("TERRITORY_NO", 1, "no"),
        info("TERRITORY_SE", 1, "se")]  # fmt: skip

# (case id, pod, streams, first pod, expected)
CASES = [
    ("first pod: the global stream and its own", "dk", MESH, "dk",
     ["GLOBAL_EVENTS", "TERRITORY_DK"]),
    ("other pod: only its own, though it leads GLOBAL", "no", MESH, "dk", ["TERRITORY_NO"]),
    ("other pod holding a follower", "se", MESH, "dk", ["TERRITORY_SE"]),
    ("first pod is another one", "se", MESH, "se", ["GLOBAL_EVENTS", "TERRITORY_SE"]),
    ("first pod holds no replica of an R3 on four pods", "dk",
     [info("GLOBAL_EVENTS", 3, "no", "se", "fi"), info("TERRITORY_DK", 1, "dk")], "dk",
     ["GLOBAL_EVENTS", "TERRITORY_DK"]),
    ("a replica of it is no reason for another pod", "fi",
     [info("GLOBAL_EVENTS", 3, "no", "se", "fi"), info("TERRITORY_FI", 1, "fi")], "dk",
     ["TERRITORY_FI"]),
    ("replicated during an election (no leader)", "dk",
     [info("GLOBAL_EVENTS", 3, None, "no", "se")], "dk", ["GLOBAL_EVENTS"]),
    ("an R1 placed on another pod's server goes with that server", "se",
     [info("TERRITORY_DK", 1, "se")], "dk", ["TERRITORY_DK"]),
    ("...and not with the pod its name suggests", "dk", [info("TERRITORY_DK", 1, "se")], "dk",
     []),
    ("R1 whose server is offline: listed as its only replica", "dk",
     [info("TERRITORY_DK", 1, None, "dk")], "no", ["TERRITORY_DK"]),
    ("R2 over two pods counts as replicated", "no", [info("PAIR", 2, "no", "se")], "dk", []),
    ("R2 over two pods: the first pod", "dk", [info("PAIR", 2, "no", "se")], "dk", ["PAIR"]),
    ("config says R1 but two holders (scaling down)", "no",
     [info("SHRINKING", 1, "no", "se")], "dk", []),
    ("server outside a cluster holds everything", "dk",
     [{"config": {"name": "LOCAL", "num_replicas": 1}, "state": {}}], "dk", ["LOCAL"]),
    ("a stream listed twice is backed up once", "dk", [*MESH, GLOBAL], "dk",
     ["GLOBAL_EVENTS", "TERRITORY_DK"]),
    ("no streams", "dk", [], "dk", []),
    ("a code that is a prefix of another's does not match it", "d",
     [info("TERRITORY_DK", 1, "dk")], "dk", []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("pod", "streams", "first_pod", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_streams_to_back_up(
    pod: str, streams: list[dict[str, Any]], first_pod: str, expected: list[str]
) -> None:
    assert streams_to_back_up(pod, streams, first_pod=first_pod) == expected


def test_every_stream_once_across_the_mesh() -> None:
    chosen = [name for pod in ("dk", "no", "se")
              for name in streams_to_back_up(pod, MESH, first_pod="dk")]  # fmt: skip
    assert sorted(chosen) == sorted(stream["config"]["name"] for stream in MESH)


@pytest.mark.parametrize("deployment", [dev_deployment, nordic_deployment, multi_host_deployment])
def test_server_names_are_the_programs(deployment: Any) -> None:
    """The backup container cannot import the plan: its copy of the naming must match what
    render/nats.py writes as `server_name` for every pod, in every layout."""
    pods = deployment().pods
    assert pods
    for pod in pods:
        assert nats_server_name(pod.code) == pod.nats_server_name
