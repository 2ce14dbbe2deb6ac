"""The stream job's entry point: read the spec, run the mode it asks for.

The modes (apply_streams.py documents the spec): streams (`apply_streams`), streams and a
retirement (`retire`), a rollout gate (`gate`). This module only dispatches, so the three
import their shared helpers from apply_streams.py and nothing imports back.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from unityplan_infra.nats import gate, retire
from unityplan_infra.nats.apply_streams import StreamError, apply, report


def _report(name: str, action: str) -> None:
    report({"stream": name, "action": action})


def read_spec() -> dict[str, Any]:
    """The job spec: from the environment (streams only), else one JSON document on stdin."""
    if "STREAMS_JSON" in os.environ:
        return {
            "url": os.environ["NATS_URL"],
            "user": os.environ["NATS_USER"],
            "password": os.environ["NATS_PASSWORD"],
            "streams": json.loads(os.environ["STREAMS_JSON"]),
        }
    spec: dict[str, Any] = json.load(sys.stdin)
    return spec


def main() -> int:
    """Run the job the spec asks for (see the module doc); 0 when done, 1 on a failure."""
    spec = read_spec()
    if "gate" in spec:
        return gate.run(spec)
    deadline = float(
        spec.get("deadline_seconds") or os.environ.get("STREAMS_DEADLINE_SECONDS", "120")
    )
    try:
        if spec.get("retired_servers"):
            return retire.run(spec, deadline)
        asyncio.run(
            apply(spec["url"], spec["user"], spec["password"], spec["streams"], _report, deadline)
        )
    except StreamError as error:
        report({"stream": error.stream, "error": str(error)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
