"""Create or update JetStream streams idempotently, over the JetStream JSON API; hand a
retired pod's share of JetStream over to the remaining servers; gate a rollout.

Self-contained on purpose (standard library and nats-py only): `pulumi up` runs this very
file with its two siblings `retire.py` and `gate.py`, packed with nats-py into one zip
application (render/stream_job.py), inside a throwaway container next to the cluster (see
components/streams.py); the tests run the same archive against real nats-server processes.
Usage:

    python streams-job.pyz < spec.json
    NATS_URL=nats://host:4222 NATS_USER=... NATS_PASSWORD=... STREAMS_JSON='[...]' \
        python streams-job.pyz            # streams only (tests)

The job spec, one JSON document on stdin (so no password appears in a process list or a
container config), in one of two modes:

- streams: {"url", "user", "password", "streams": [StreamConfig, ...],
  "deadline_seconds": 120 (optional), and, when pods were retired,
  "retired_servers": ["service-nats-se", ...], "system_user", "system_password",
  "handover_deadline_seconds": 600 (optional), "offline_grace_seconds": 30 (optional: how
  long a stream whose only copy is on a stopped retired server may stay offline before the
  job stops and says to retire in two steps)}. Ensures every stream, then hands the
  retired servers' replicas and streams over and removes those servers from the JetStream
  meta group (retire.py);
- gate: {"url", "user", "password", "gate": {"server": "service-nats-dk",
  "url": "nats://host:port" (optional, default the top-level url),
  "deadline_seconds": 300 (optional), "peer_of": ["TERRITORY_DK", ...] (optional)},
  "system_user", "system_password" (optional: then the meta group is checked too)}. Waits
  until that server is back and JetStream-current (gate.py).

It prints one JSON line per action as soon as it is done: {"stream": ...,
"action": created|updated|unchanged}, then for a retirement {"stream": ...,
"action": peer-removed|handed-over|moved, ...} and {"server": ...,
"action": meta-leader-stepped-down|removed|unchanged, ...}, for a gate {"gate": ...,
"action": "passed", ...}; or one error line, {"stream" | "server" | "gate": ...,
"error": ...}, for what it gave up on (then it exits 1), so a failure never hides what was
already done.
"""

from __future__ import annotations

import asyncio
import json
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


async def request(
    nc: Client, subject: str, payload: dict[str, Any] | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """A request whose reply is one JSON document (the JetStream and system APIs)."""
    data = json.dumps(payload).encode() if payload is not None else b""
    reply = await nc.request(subject, data, timeout=timeout)
    result: dict[str, Any] = json.loads(reply.data)
    return result


async def _api(nc: Client, subject: str, payload: dict[str, Any] | None) -> dict[str, Any]:
    return await request(nc, f"{API}.{subject}", payload)


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


async def connect(url: str, user: str, password: str) -> Client:
    """The job's connection: it rides out a server restart (reconnects for ~30 s)."""
    return await nats.connect(
        servers=[url], user=user, password=password, connect_timeout=5,
        max_reconnect_attempts=30, reconnect_time_wait=1,
    )  # fmt: skip


async def apply(
    url: str,
    user: str,
    password: str,
    streams: list[dict[str, Any]],
    on_done: Callable[[str, str], None] = _ignore,
    deadline_seconds: float = 120.0,
) -> dict[str, str]:
    """Connect, ensure the streams, disconnect."""
    nc = await connect(url, user, password)
    try:
        return await ensure_streams(nc, streams, deadline_seconds, on_done)
    finally:
        await nc.close()


def report(record: dict[str, Any]) -> None:
    """One line of the job's output, at once (a failure later never hides it)."""
    print(json.dumps(record), flush=True)
