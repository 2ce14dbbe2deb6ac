"""Observe real nats-server processes running inside emulated hosts (see netns.py).

Why: the test process stays in the root namespace, which has no way into a lab. Everything
that talks to a server (curl on the monitoring port, nats-py helper programs, the program's
own stream job) therefore runs *inside* a host's namespace through `NetnsLab.run`, the
way tests/realsw/test_nats_dev_cluster.py does it. `NatsNode` bundles where one server is
reached from its own host; the module functions judge a whole cluster from those nodes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tests.support.netns import Background, NetnsError, NetnsLab, wait_until
from tests.support.stream_job import job_argv

# Helper programs, run with the venv's python inside a namespace (nats-py is installed).
REQUEST_SCRIPT = """
import asyncio, os, sys
import nats

async def main() -> None:
    nc = await nats.connect(os.environ["NATS_URL"], user=os.environ["NATS_USER"],
                            password=os.environ["NATS_PASSWORD"], allow_reconnect=False)
    try:
        reply = await nc.request(sys.argv[1], sys.argv[2].encode(), timeout=float(sys.argv[3]))
        print(reply.data.decode())
    finally:
        await nc.close()

asyncio.run(main())
"""

# JetStream publish with acks: each message carries a Nats-Msg-Id, so a retry after a lost
# ack cannot store it twice. Retries (leader election, no responders) until the deadline.
# Prints one JSON line per acked message.
PUBLISH_SCRIPT = """
import asyncio, json, os, sys, time
import nats
import nats.errors

async def swallow(error: Exception) -> None:
    pass

async def main() -> int:
    subject, prefix = sys.argv[1], sys.argv[2]
    count, deadline = int(sys.argv[3]), float(sys.argv[4])
    nc = await nats.connect(os.environ["NATS_URL"], user=os.environ["NATS_USER"],
                            password=os.environ["NATS_PASSWORD"], error_cb=swallow)
    js = nc.jetstream(timeout=1)
    end = time.monotonic() + deadline
    try:
        for index in range(count):
            msg_id = f"{prefix}-{index}"
            attempts = 0
            while True:
                attempts += 1
                try:
                    ack = await js.publish(subject, msg_id.encode(), timeout=1,
                                           headers={"Nats-Msg-Id": msg_id})
                    break
                except nats.errors.Error as error:
                    if time.monotonic() > end:
                        print(json.dumps({"id": msg_id, "error": repr(error)}), flush=True)
                        return 1
                    await asyncio.sleep(0.1)
            print(json.dumps({"id": msg_id, "seq": ack.seq, "stream": ack.stream,
                              "duplicate": bool(ack.duplicate), "attempts": attempts,
                              "t": time.time()}), flush=True)
    finally:
        await nc.close()
    return 0

sys.exit(asyncio.run(main()))
"""

# Every message of a stream by sequence number: {"<seq>": {"subject", "data"}}, or null
# for a sequence the stream does not hold. A read needs the stream's leader: while there is
# none (an election), the server answers 503 or nothing, so such reads are retried.
FETCH_SCRIPT = """
import asyncio, json, os, sys, time
import nats
import nats.errors
import nats.js.errors

async def main() -> None:
    nc = await nats.connect(os.environ["NATS_URL"], user=os.environ["NATS_USER"],
                            password=os.environ["NATS_PASSWORD"], allow_reconnect=False)
    js = nc.jetstream(timeout=2)
    found, retries = {}, 0
    end = time.monotonic() + 20
    try:
        for seq in range(int(sys.argv[2]), int(sys.argv[3]) + 1):
            while True:
                try:
                    msg = await js.get_msg(sys.argv[1], seq)
                    found[seq] = {"subject": msg.subject, "data": (msg.data or b"").decode()}
                except nats.js.errors.NotFoundError:
                    found[seq] = None
                except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError,
                        nats.errors.NoRespondersError):
                    if time.monotonic() > end:
                        raise
                    retries += 1
                    await asyncio.sleep(0.2)
                    continue
                break
    finally:
        await nc.close()
    print(json.dumps({"messages": found, "retries": retries}))

asyncio.run(main())
"""

# Answers requests on a subject with a fixed reply, for at most `duration` seconds.
RESPONDER_SCRIPT = """
import asyncio, os, sys
import nats

async def swallow(error: Exception) -> None:
    pass

async def main() -> None:
    nc = await nats.connect(os.environ["NATS_URL"], user=os.environ["NATS_USER"],
                            password=os.environ["NATS_PASSWORD"], error_cb=swallow,
                            max_reconnect_attempts=-1, reconnect_time_wait=0.2)

    async def answer(msg) -> None:
        await msg.respond(sys.argv[2].encode())

    await nc.subscribe(sys.argv[1], cb=answer)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.sleep(float(sys.argv[3]))
    await nc.close()

asyncio.run(main())
"""

# A probe every `interval` seconds for at most `duration` seconds: mode "request" sends a
# request and waits for the reply, mode "publish" publishes to JetStream and waits for the
# ack (1 s each). One JSON line per probe: {"t": wall clock at send, "ok", "ms", "error"};
# and one per change of the connection: {"t", "event": "disconnected" | "reconnected"}.
PROBE_SCRIPT = """
import asyncio, json, os, sys, time
import nats
import nats.errors

async def swallow(error: Exception) -> None:
    pass

def event(name):
    async def report() -> None:
        print(json.dumps({"t": time.time(), "event": name}), flush=True)
    return report

async def main() -> None:
    mode, subject = sys.argv[1], sys.argv[2]
    interval, duration = float(sys.argv[3]), float(sys.argv[4])
    nc = await nats.connect(os.environ["NATS_URL"], user=os.environ["NATS_USER"],
                            password=os.environ["NATS_PASSWORD"], error_cb=swallow,
                            disconnected_cb=event("disconnected"),
                            reconnected_cb=event("reconnected"),
                            max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream(timeout=1)
    end = time.monotonic() + duration
    while time.monotonic() < end:
        started, wall = time.monotonic(), time.time()
        record = {"t": wall, "ok": False}
        try:
            if mode == "publish":
                await js.publish(subject, b"probe", timeout=1)
            else:
                await nc.request(subject, b"probe", timeout=1)
            record["ok"] = True
        except nats.errors.Error as error:
            record["error"] = repr(error)
        record["ms"] = round((time.monotonic() - started) * 1000, 2)
        print(json.dumps(record), flush=True)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    await nc.close()

asyncio.run(main())
"""


@dataclass(frozen=True)
class NatsNode:
    """One nats-server as seen from its own emulated host."""

    lab: NetnsLab
    host: str  # lab host the server runs on (and its clients run in)
    client_url: str
    monitor_url: str
    user: str
    password: str
    server: Background | None = None

    def env(self) -> dict[str, str]:
        return {"NATS_URL": self.client_url, "NATS_USER": self.user,
                "NATS_PASSWORD": self.password}  # fmt: skip

    def monitor(self, path: str) -> dict[str, Any]:
        """GET a monitoring endpoint of the server from inside its host."""
        url = f"{self.monitor_url}/{path}"
        result = self.lab.run(self.host, ["curl", "-sf", "--max-time", "3", url], timeout=10)
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def python(self, script: str, *args: str, timeout: float = 30.0) -> str:
        """Run a helper program as a client of this server, inside its host."""
        argv = [sys.executable, "-c", script, *args]
        return self.lab.run(self.host, argv, env=self.env(), timeout=timeout).stdout

    def spawn(self, script: str, *args: str, name: str) -> Background:
        return self.lab.spawn(self.host, [sys.executable, "-c", script, *args], name=name,
                              env=self.env())  # fmt: skip

    def request(self, subject: str, payload: Any = "", timeout: float = 5.0) -> dict[str, Any]:
        """A NATS request through this server; JetStream API replies are JSON."""
        text = payload if isinstance(payload, str) else json.dumps(payload)
        reply: dict[str, Any] = json.loads(
            self.python(REQUEST_SCRIPT, subject, text, str(timeout), timeout=timeout + 15)
        )
        return reply

    def publish(
        self, subject: str, prefix: str, count: int, deadline: float = 30.0
    ) -> list[dict[str, Any]]:
        """Publish `count` messages `<prefix>-<i>` with JetStream acks (retried until acked)."""
        out = self.python(PUBLISH_SCRIPT, subject, prefix, str(count), str(deadline),
                          timeout=deadline + 20)  # fmt: skip
        acks = [json.loads(line) for line in out.splitlines() if line.strip()]
        failed = [ack for ack in acks if "error" in ack]
        if failed or len(acks) != count:
            raise AssertionError(f"publish via {self.host} incomplete: {acks}")
        return acks

    def fetch(self, stream: str, first: int, last: int) -> dict[int, dict[str, str] | None]:
        """Messages `first`..`last` of `stream`, read through this server."""
        out = json.loads(self.python(FETCH_SCRIPT, stream, str(first), str(last), timeout=60))
        return {int(seq): message for seq, message in out["messages"].items()}

    def apply_streams(self, streams: list[dict[str, Any]]) -> dict[str, str]:
        """Run the program's stream job as a script against this server, as `pulumi up` does."""
        env = {**self.env(), "STREAMS_JSON": json.dumps(streams)}
        result = self.lab.run(self.host, job_argv(), env=env, timeout=150)
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        return {line["stream"]: line["action"] for line in lines}

    def server_id(self) -> str:
        return str(self.monitor("varz")["server_id"])

    def route_ids(self) -> set[str]:
        return {route["remote_id"] for route in self.monitor("routez").get("routes") or []}

    def local_stream(self, stream: str) -> dict[str, Any] | None:
        """This server's own replica of `stream` (its local store state), from /jsz."""
        jsz = self.monitor("jsz?accounts=true&streams=true")
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    found: dict[str, Any] = detail
                    return found
        return None


def check_running(nodes: Mapping[str, NatsNode]) -> None:
    for name, node in nodes.items():
        if node.server is not None and not node.server.running():
            raise AssertionError(f"nats-server of {name} exited:\n{node.server.output()}")


def formed(nodes: Mapping[str, NatsNode], why: list[str] | None = None) -> bool:
    """Every server routes to all others and JetStream has a meta leader over all of them.

    `why` (when given) receives the reason of a False, for the timeout message."""
    check_running(nodes)

    def no(reason: str) -> bool:
        if why is not None:
            why[:] = [reason]
        return False

    try:
        ids = {name: node.server_id() for name, node in nodes.items()}
        for name, node in nodes.items():
            routes, expected = node.route_ids(), {ids[o] for o in ids if o != name}
            if routes != expected:
                return no(f"{name} routes to {sorted(routes)}, expected {sorted(expected)}")
            meta = node.monitor("jsz").get("meta_cluster", {})
            if not meta.get("leader") or meta.get("cluster_size") != len(nodes):
                return no(f"{name}'s meta cluster: {meta}")
    except (NetnsError, json.JSONDecodeError, KeyError) as error:  # not listening yet
        return no(f"{type(error).__name__}: {str(error)[-600:]}")
    return True


def wait_formed(nodes: Mapping[str, NatsNode], timeout: float) -> None:
    def logs() -> str:
        return "\n".join(
            f"=== {name}\n{node.server.output()[-4000:]}"
            for name, node in nodes.items()
            if node.server is not None
        )

    why: list[str] = []
    wait_until(lambda: formed(nodes, why), timeout=timeout, interval=0.25,
               what=lambda: f"cluster of {sorted(nodes)} formed (last: {why})\n{logs()}")  # fmt: skip


def stream_info(node: NatsNode, stream: str) -> dict[str, Any]:
    return node.request(f"$JS.API.STREAM.INFO.{stream}")


def settled_info(
    node: NatsNode, stream: str, replicas: int, timeout: float = 20.0
) -> dict[str, Any]:
    """Stream info once the stream has a leader and all its replicas are current, lag 0."""
    latest: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal latest
        try:
            latest = stream_info(node, stream)
        except (NetnsError, json.JSONDecodeError):
            return False
        group = latest.get("cluster", {})
        followers = group.get("replicas") or []
        return (
            bool(group.get("leader"))
            and len(followers) == replicas - 1
            and all(f.get("current") and not f.get("lag") for f in followers)
        )

    wait_until(settled, timeout=timeout, interval=0.3, what=lambda: f"{stream} settled: {latest}")
    return latest
