"""JetStream streams of the mesh, as data: the guide's GLOBAL_EVENTS and TERRITORY_<CODE>.

Each definition is a JetStream API `StreamConfig` (the JSON the server and every client
library speak), so the same dicts drive the deploy-time job and the tests.
"""

from __future__ import annotations

from typing import Any

from unityplan_infra.topology.plan import Deployment, PodPlan

NANOS_PER_DAY = 24 * 60 * 60 * 1_000_000_000
GLOBAL_STREAM = "GLOBAL_EVENTS"


def territory_stream_name(pod: PodPlan) -> str:
    return f"TERRITORY_{pod.code.upper()}"


def stream_configs(deployment: Deployment) -> list[dict[str, Any]]:
    """All streams of the stack, GLOBAL_EVENTS first."""
    settings = deployment.config.streams
    streams: list[dict[str, Any]] = [
        {
            "name": GLOBAL_STREAM,
            "subjects": ["global.*"],
            "storage": "file",
            "retention": "limits",
            "num_replicas": settings.global_replicas,
            "max_age": settings.global_max_age_days * NANOS_PER_DAY,
            "max_msgs": -1,
            "max_bytes": -1,
            "discard": "old",
        }
    ]
    keeper = deployment.staying[0]
    planned = {pod.code: pod for pod in (*deployment.pods, *deployment.retired)}
    # In config order, whatever each pod's state: the job's trigger hashes this list, and a
    # pod going from leaving to retired must not reorder it (the job would run again).
    for pod in (planned[entry.code] for entry in deployment.config.pods):
        # A leaving or retired pod's stream stays, with all its messages, on the first
        # staying pod's server: changing its placement moves it there (a stream move).
        home = keeper if pod in deployment.handed_over else pod
        streams.append(
            {
                "name": territory_stream_name(pod),
                "subjects": [f"territory.{pod.code}.*"],
                "storage": "file",
                "retention": "limits",
                "num_replicas": 1,
                "max_age": settings.territory_max_age_days * NANOS_PER_DAY,
                "max_msgs": -1,
                "max_bytes": -1,
                "discard": "old",
                # Keep a territory's data on its own pod's server.
                "placement": {"tags": [home.territory_tag]},
            }
        )
    return streams
