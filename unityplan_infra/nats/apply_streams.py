"""Create or update JetStream streams idempotently, over the JetStream JSON API.

Self-contained on purpose (standard library and nats-py only): `pulumi up` runs this very
file, packed with nats-py into one zip application (render/stream_job.py), inside a
throwaway container next to the cluster (see components/streams.py); the tests run the same
archive against real nats-server processes. Usage:

    NATS_URL=nats://host:4222 NATS_USER=... NATS_PASSWORD=... STREAMS_JSON='[...]' \
        python streams-job.pyz
    python streams-job.pyz < spec.json   # {"url", "user", "password", "streams"}

It prints one JSON line per stream as soon as that stream is done:
{"stream": ..., "action": created|updated|unchanged}, or {"stream": ..., "error": ...} for
the stream it gave up on (then it exits 1), so a failure never hides what was already done.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

API = "$JS.API"
STREAM_NOT_FOUND = 10059
# "no suitable peers for placement" (HTTP-like code 400): no server matches the stream's
# placement yet, e.g. a new pod's server has not joined the JetStream meta group. Transient
# when the server is on its way, so it is retried until the deadline like the 5xx codes.
NO_SUITABLE_PEERS = 10005
# Fields the program manages; the server adds defaults for the rest.
MANAGED_FIELDS = (
    "subjects", "storage", "retention", "num_replicas", "max_age", "max_msgs", "max_bytes",
    "discard", "placement",
)  # fmt: skip


class StreamError(RuntimeError):
    """The server refused a stream definition for good, or the deadline passed."""

    stream: str | None = None


async def _api(nc: Client, subject: str, payload: dict[str, Any] | None) -> dict[str, Any]:
    data = json.dumps(payload).encode() if payload is not None else b""
    reply = await nc.request(f"{API}.{subject}", data, timeout=5)
    result: dict[str, Any] = json.loads(reply.data)
    return result


def _differs(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    return any(current.get(key) != desired.get(key) for key in MANAGED_FIELDS if key in desired)


class _Transient(RuntimeError):
    """A state that passes with time; `attempted` is the change that may have happened."""

    def __init__(self, text: str, attempted: str | None = None) -> None:
        super().__init__(text)
        self.attempted = attempted


async def ensure_stream(nc: Client, desired: dict[str, Any]) -> str:
    """Make one stream match `desired`; return what was done."""
    name = desired["name"]
    info = await _api(nc, f"STREAM.INFO.{name}", None)
    error = info.get("error")
    if error and error.get("err_code") == STREAM_NOT_FOUND:
        action, subject = "created", f"STREAM.CREATE.{name}"
    elif error:
        raise _transient_or_fatal(name, error)
    elif _differs(info["config"], desired):
        action, subject = "updated", f"STREAM.UPDATE.{name}"
    else:
        return "unchanged"
    try:
        result = await _api(nc, subject, desired)
    except (NoRespondersError, NatsTimeoutError) as lost:
        # The server may have applied the change before the reply was lost.
        raise _Transient(f"stream {name}: no reply to {subject}", attempted=action) from lost
    if "error" in result:
        raise _transient_or_fatal(name, result["error"])
    return action


def _transient_or_fatal(name: str, error: dict[str, Any]) -> Exception:
    # 503: JetStream not ready (meta leader election); 500 "insufficient resources" / "no
    # suitable peers": not enough servers up yet for the replicas; 400 with err_code 10005:
    # no server with the placement tags yet. All pass with time.
    text = (
        f"stream {name}: {error.get('description')}"
        f" (code {error.get('code')}, err_code {error.get('err_code')})"
    )
    if error.get("code") in (500, 503) or error.get("err_code") == NO_SUITABLE_PEERS:
        return _Transient(text)
    return StreamError(text)


def _ignore(name: str, action: str) -> None:
    pass


async def ensure_streams(
    nc: Client,
    streams: list[dict[str, Any]],
    deadline_seconds: float = 120.0,
    on_done: Callable[[str, str], None] = _ignore,
) -> dict[str, str]:
    """Ensure every stream, retrying transient cluster states until the deadline.

    `on_done(name, action)` is called as soon as each stream is done. A `StreamError`
    carries the failed stream's name in `stream`.
    """
    deadline = time.monotonic() + deadline_seconds
    done: dict[str, str] = {}
    for desired in streams:
        attempted: str | None = None
        while True:
            try:
                action = await ensure_stream(nc, desired)
                # A retry that finds the stream as wanted reports the change it completed.
                done[desired["name"]] = attempted if action == "unchanged" and attempted else action
                on_done(desired["name"], done[desired["name"]])
                break
            except StreamError as error:
                error.stream = desired["name"]
                raise
            except (_Transient, NoRespondersError, NatsTimeoutError) as error:
                attempted = getattr(error, "attempted", None) or attempted
                if time.monotonic() > deadline:
                    failed = StreamError(f"gave up after {deadline_seconds}s: {error}")
                    failed.stream = desired["name"]
                    raise failed from error
                await asyncio.sleep(1.0)
    return done


async def apply(
    url: str,
    user: str,
    password: str,
    streams: list[dict[str, Any]],
    on_done: Callable[[str, str], None] = _ignore,
    deadline_seconds: float = 120.0,
) -> dict[str, str]:
    """Connect, ensure the streams, disconnect."""
    nc = await nats.connect(
        servers=[url], user=user, password=password, connect_timeout=5,
        max_reconnect_attempts=30, reconnect_time_wait=1,
    )  # fmt: skip
    try:
        return await ensure_streams(nc, streams, deadline_seconds, on_done)
    finally:
        await nc.close()


def _report(name: str, action: str) -> None:
    print(json.dumps({"stream": name, "action": action}), flush=True)


def main() -> int:
    """Job spec from the environment, or (deploy time) as one JSON document on stdin:
    {"url": ..., "user": ..., "password": ..., "streams": [...]}, so the password never
    appears in a process list or container config."""
    if "STREAMS_JSON" in os.environ:
        spec = {
            "url": os.environ["NATS_URL"],
            "user": os.environ["NATS_USER"],
            "password": os.environ["NATS_PASSWORD"],
            "streams": json.loads(os.environ["STREAMS_JSON"]),
        }
    else:
        spec = json.load(sys.stdin)
    deadline = float(os.environ.get("STREAMS_DEADLINE_SECONDS", "120"))
    try:
        asyncio.run(
            apply(spec["url"], spec["user"], spec["password"], spec["streams"], _report, deadline)
        )
    except StreamError as error:
        print(json.dumps({"stream": error.stream, "error": str(error)}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
