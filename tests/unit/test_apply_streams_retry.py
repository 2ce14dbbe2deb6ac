"""apply_streams' bookkeeping when a reply is lost: the change still counts as made.

A real server cannot be told to drop one reply on demand, so this one case uses a scripted
client; everything else about apply_streams runs against real nats-server processes
(tests/realsw, tests/integration).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError

from unityplan_infra.nats.apply_streams import STREAM_NOT_FOUND, ensure_streams

STREAM = {"name": "TERRITORY_NO", "subjects": ["territory.no.*"], "num_replicas": 1}


@dataclass
class Reply:
    data: bytes


class LosesFirstCreateReply:
    """Applies the create, then loses its reply once (as a leader change can)."""

    def __init__(self) -> None:
        self.stream: dict[str, Any] | None = None
        self.lost = False

    async def request(self, subject: str, data: bytes, timeout: float) -> Reply:
        if subject.startswith("$JS.API.STREAM.INFO."):
            if self.stream is None:
                return Reply(json.dumps({"error": {"err_code": STREAM_NOT_FOUND}}).encode())
            return Reply(json.dumps({"config": self.stream}).encode())
        if subject.startswith("$JS.API.STREAM.CREATE."):
            self.stream = json.loads(data)
            if not self.lost:
                self.lost = True
                raise NatsTimeoutError
            return Reply(b"{}")
        raise AssertionError(subject)


def test_a_create_whose_reply_was_lost_is_reported_as_created() -> None:
    client = LosesFirstCreateReply()
    result = asyncio.run(ensure_streams(client, [STREAM], deadline_seconds=10))  # type: ignore[arg-type]
    assert result == {"TERRITORY_NO": "created"}
    assert client.lost and client.stream == STREAM
