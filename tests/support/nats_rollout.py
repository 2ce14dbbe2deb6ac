"""The rollout procedure for the NATS cluster, run against real servers on loopback.

Why: a NATS upgrade replaces the three servers' binary one pod at a time (config order dk,
no, se). Whether that loses or doubles acknowledged JetStream messages, and how long writers
wait, depends on what gates the next pod's stop, and only real servers can tell. The
procedure per pod, as `scripts/rollout.sh` runs it:

1. stop the pod's nats-server with SIGTERM, as `docker stop` does with the program's grace
   period (SIGKILL only once that runs out);
2. start it again on the same store directory and config with the new binary;
3. gate: poll the monitoring port's `/healthz` (the full check: 200 only once the JetStream
   meta group and every stream and consumer replica on that server is current) until 200,
   bounded; then, from /jsz, until every replicated stream's leader reports all its
   replicas current and the meta leader all its peers (`RolloutBed.replicas_current`:
   /healthz alone passes too early, see there);
4. only then go on to the next pod.

`RolloutBed` is the dev stack's cluster of tests/support/jetstream_bed.py with a binary per
server; `roll` runs the procedure (or a variant with a weaker gate: /healthz alone, or only
"the client port listens", the negative control; or the program's own gate, "program": the
stream job archive in gate mode, nats/gate.py, over the client port only, as `pulumi up`
runs it between two pods); `Publisher` writes with JetStream acks while it runs and keeps
every ack's time; `read_stream` reads back what the stream holds; `tally` compares the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import nats
import nats.errors
from nats.aio.client import Client

from tests.support.jetstream_bed import LOOPBACK, JetStreamBed
from tests.support.stream_job import start_job
from unityplan_infra.topology.stop import STOP_GRACE_SECONDS

OLD_VERSION = "2.10.25"  # deployed before the 2.14 image (tests/support/nats_versions.sh)
NEW_VERSION = "2.14.6"  # the image's minor: the venv's nats-server (requirements-dev.txt)
INSTALL_SCRIPT = "tests/support/nats_versions.sh"
VERSIONS_PREFIX = Path(os.environ.get("UNITYPLAN_NATS_VERSIONS", "/opt/unityplan-nats"))
HEALTH_TIMEOUT = 120.0  # the rollout's bound on one server's /healthz gate
POLL = 0.05  # s between two gate polls

# What lets the rollout go on to the next pod: "healthz" is the restarted server's full
# /healthz 200 (the procedure as first written); "healthz+replicas" also waits until every
# replicated stream's leader reports all its replicas current and the meta leader all its
# peers (the procedure as it must be, see `replicas_current`); "listening" only waits for
# the client port (the negative control); "program" runs the program's gate (the stream
# job archive in gate mode: client account and client port only, no monitoring port);
# "program+meta" the same with the system user in its spec (it then checks the meta group).
Gate = Literal["healthz", "healthz+replicas", "listening", "program", "program+meta"]
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def installed_binary(version: str = OLD_VERSION) -> Path:
    """The nats-server of `version` that nats_versions.sh installed; fails with how to get it."""
    binary = VERSIONS_PREFIX / version / "nats-server"
    if not os.access(binary, os.X_OK):
        raise AssertionError(
            f"nats-server {version} is not installed at {binary}; run {INSTALL_SCRIPT}"
            f" (scripts/test.sh does) or set UNITYPLAN_NATS_VERSIONS to its prefix"
        )
    return binary


def binary_version(binary: str | Path) -> str:
    """`nats-server --version` without the text around it: '2.10.25'."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                         timeout=10, check=True).stdout  # fmt: skip
    return out.strip().removeprefix("nats-server: v")


class RolloutBed(JetStreamBed):
    """JetStreamBed whose servers each run a binary of their own, which `roll` swaps."""

    def __init__(self, workdir: Path, binary: str | Path | None = None) -> None:
        super().__init__(workdir)
        default = binary or shutil.which("nats-server") or "nats-server"
        self.binaries: dict[str, str] = {code: str(default) for code in self.servers}

    def start_server(self, code: str) -> None:
        server = self.servers[code]
        if server.running():
            return
        with server.log_file.open("ab") as log:
            server.process = subprocess.Popen(
                [self.binaries[code], "-c", str(server.config_file)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def stop_gracefully(self, code: str, grace: float = STOP_GRACE_SECONDS["nats"]) -> bool:
        """SIGTERM, wait up to `grace`, then SIGKILL, as `docker stop` does. True: it exited
        within the grace period by itself."""
        process = self.servers[code].process
        if process is None or process.poll() is not None:
            return True
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
            return True
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            return False

    # --- probes --------------------------------------------------------------------------
    def http(self, code: str, path: str) -> tuple[int, str]:
        """(status, body) of a monitoring endpoint; status 0 while nothing answers."""
        url = f"http://{LOOPBACK}:{self.servers[code].monitor_port}/{path}"
        try:
            with DIRECT.open(url, timeout=2) as response:
                return int(response.status), response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return 0, ""

    def healthy(self, code: str) -> bool:
        """The full /healthz: meta group and every replica on this server current."""
        return self.http(code, "healthz")[0] == 200

    def listening(self, code: str) -> bool:
        """The client port accepts connections (what a naive rollout waits for)."""
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((LOOPBACK, self.servers[code].client_port)) == 0

    def replicas_current(self) -> bool:
        """Every replicated stream has a leader that reports all its replicas current, and
        the meta leader all its peers (`formed`), all read from /jsz.

        Why: /healthz 200 on a restarted server does not mean its stream replicas caught up.
        A raft follower that has not heard from a leader yet and has applied what it knows
        counts as current; right after a restart /healthz is 200 in 0.2-0.6 s while the
        stream's leader still reports that replica behind. Stopping the next server then, if
        it is the leader (or the only other current replica), leaves one current replica of
        three: no quorum until a new election, 4-8 s without acks. Measured under write load
        on 2 cores: with /healthz alone as the gate, 3 of 18 rolls stalled GLOBAL_EVENTS for
        4.6-7.8 s; with this check as well, 1 of 70 (5.5 s: a failed leader transfer, see
        tests/realsw/test_nats_rolling_upgrade.py). Only the leader's view counts: a
        follower's /jsz lists its peers with stale flags.
        """
        replicated: set[str] = set()
        confirmed: set[str] = set()
        for code, server in self.servers.items():
            try:
                jsz = self.monitor(code, "jsz?accounts=true&streams=true&config=true")
            except (OSError, ValueError):
                return False
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    wanted = int((detail.get("config") or {}).get("num_replicas", 1))
                    if wanted <= 1:
                        continue
                    replicated.add(detail["name"])
                    cluster = detail.get("cluster") or {}
                    if cluster.get("leader") != server.name:
                        continue
                    followers = cluster.get("replicas") or []
                    if len(followers) == wanted - 1 and all(
                        f.get("current") and not f.get("offline") for f in followers
                    ):
                        confirmed.add(detail["name"])
        return replicated == confirmed and self.formed()

    def version(self, code: str) -> str:
        return str(self.monitor(code, "varz")["version"])

    def stream_leader(self, stream: str) -> str:
        """The server leading `stream` now, as any running server's /jsz reports it."""
        for code, server in self.servers.items():
            if not server.running():
                continue
            with contextlib.suppress(OSError, ValueError):
                jsz = self.monitor(code, "jsz?accounts=true&streams=true")
                for account in jsz.get("account_details") or []:
                    for detail in account.get("stream_detail") or []:
                        if detail.get("name") == stream:
                            return str((detail.get("cluster") or {}).get("leader", ""))
        return ""

    def local_state(self, code: str, stream: str) -> dict[str, Any] | None:
        """This server's own replica of `stream` (its store's state), from its /jsz."""
        jsz = self.monitor(code, "jsz?accounts=true&streams=true")
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    state: dict[str, Any] = detail.get("state") or {}
                    return state
        return None

    def log_of(self, code: str) -> str:
        return self.servers[code].log_file.read_text(errors="replace")


# ==========================================================================================
# The procedure
# ==========================================================================================
@dataclass
class Step:
    """One pod's turn. Times are monotonic seconds; durations count from the SIGTERM."""

    code: str
    server_name: str
    from_version: str
    to_version: str
    gate: Gate
    stream_leader_before: str  # who led GLOBAL_EVENTS when the SIGTERM went
    stopped_at: float = 0.0  # SIGTERM sent
    exited_at: float = 0.0
    clean_exit: bool = True  # exited by itself within the grace period
    started_at: float = 0.0  # new binary launched
    listening_at: float = 0.0
    gate_passed_at: float = 0.0
    healthy_at: float = 0.0  # first /healthz 200 seen (after the gate for "listening")
    healthy_when_left: bool = True  # /healthz said 200 when the rollout moved on
    health_when_left: str = ""  # the /healthz body then
    # GLOBAL_EVENTS then, as its leader answers STREAM.INFO: (leader, current replicas). Under
    # write load a follower a few entries behind shows as not current for an instant.
    stream_when_left: tuple[str, int] = ("", 0)
    gate_report: dict[str, Any] = field(default_factory=dict)  # "program": the job's line

    @property
    def stopped_stream_leader(self) -> bool:
        """This step stopped the server that led GLOBAL_EVENTS: its leadership had to move."""
        return self.stream_leader_before == self.server_name

    @property
    def exit_seconds(self) -> float:
        return self.exited_at - self.stopped_at

    @property
    def healthy_seconds(self) -> float:
        """SIGTERM to the first /healthz 200 of the new server."""
        return self.healthy_at - self.stopped_at if self.healthy_at else float("inf")

    @property
    def gate_seconds(self) -> float:
        """SIGTERM to the moment the rollout moved on."""
        return self.gate_passed_at - self.stopped_at

    @property
    def down_seconds(self) -> float:
        """SIGTERM to the client port listening again."""
        return self.listening_at - self.stopped_at


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, bed: RolloutBed, code: str
) -> float:
    """Poll `condition()` until true, bounded; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        process = bed.servers[code].process
        if process is None or process.poll() is not None:
            raise AssertionError(f"nats-server {code} exited while waiting for {what}:\n"
                                 f"{bed.log_of(code)[-4000:]}")  # fmt: skip
        if time.monotonic() > deadline:
            status, body = bed.http(code, "healthz")
            raise AssertionError(f"{code}: no {what} within {timeout}s (healthz {status} {body})"
                                 f"\n{bed.log_of(code)[-4000:]}")  # fmt: skip
        time.sleep(POLL)


def roll(bed: RolloutBed, order: Sequence[str], binary: str | Path,
         gate: Gate = "healthz+replicas",
         *, timeout: float = HEALTH_TIMEOUT, stream: str = "GLOBAL_EVENTS") -> list[Step]:  # fmt: skip
    """Restart the servers of `order` one after the other on `binary`, same store and config.

    `gate` says what the rollout waits for before the next pod (see `Gate`). Every step
    records whether /healthz said 200 at the moment the rollout moved on (and, except for
    "listening", which moves on at once, how many GLOBAL_EVENTS replicas its leader reported
    current then), and each server's first /healthz 200 (for "listening", found after the
    whole roll).
    """
    steps: list[Step] = []
    to_version = binary_version(binary)
    for code in order:
        step = Step(code, bed.server_name(code), bed.version(code), to_version, gate,
                    bed.stream_leader(stream))  # fmt: skip
        step.stopped_at = time.monotonic()
        step.clean_exit = bed.stop_gracefully(code)
        step.exited_at = time.monotonic()
        bed.binaries[code] = str(binary)
        bed.start_server(code)
        step.started_at = time.monotonic()
        # The program's gate starts at once: it must ride out the refused connections itself.
        job = (program_gate(bed, code, timeout, meta=gate == "program+meta")
               if gate in ("program", "program+meta") else None)  # fmt: skip
        step.listening_at = wait_for(partial(bed.listening, code), timeout, "client port",
                                     bed, code)  # fmt: skip
        step.gate_passed_at = step.listening_at
        if job is not None:
            step.gate_passed_at, step.gate_report = wait_program_gate(job, bed, code)
        if gate in ("healthz", "healthz+replicas"):
            step.healthy_at = wait_for(partial(bed.healthy, code), timeout, "/healthz 200",
                                       bed, code)  # fmt: skip
            step.gate_passed_at = step.healthy_at
        if gate == "healthz+replicas":
            step.gate_passed_at = wait_for(bed.replicas_current, timeout,
                                           "all replicas current", bed, code)  # fmt: skip
        status, body = bed.http(code, "healthz")
        step.healthy_when_left, step.health_when_left = status == 200, body.strip()
        if gate != "listening":  # the negative control moves on at once
            step.stream_when_left = replicas_now(bed, code, stream)
        steps.append(step)
    for step in steps:  # the ungated ones: when did they get there after all
        if not step.healthy_at:
            step.healthy_at = wait_for(partial(bed.healthy, step.code), timeout,
                                       "/healthz 200", bed, step.code)  # fmt: skip
    return steps


def program_gate(bed: JetStreamBed, code: str, timeout: float,
                 meta: bool = False) -> subprocess.Popen[str]:  # fmt: skip
    """The program's gate for `code`'s server: the stream job archive (no site-packages),
    spec on stdin, as `pulumi up` runs it after replacing that server's container; `meta`:
    with the system user, so that it checks the meta group as well."""
    spec: dict[str, Any] = {
        "url": bed.url(code), "user": bed.user, "password": bed.password,
        "gate": {"server": bed.server_name(code), "url": bed.url(code),
                 "deadline_seconds": timeout},
    }  # fmt: skip
    if meta:
        spec |= {"system_user": bed.system_user, "system_password": bed.system_password}
    return start_job(spec)


def wait_program_gate(job: subprocess.Popen[str], bed: JetStreamBed,
                      code: str) -> tuple[float, dict[str, Any]]:  # fmt: skip
    """(monotonic time the gate passed, its report line); AssertionError if it did not.
    The job itself is bounded by its spec's deadline."""
    while job.poll() is None:
        time.sleep(POLL / 5)
    passed_at = time.monotonic()
    assert job.stdout is not None and job.stderr is not None
    out, err = job.stdout.read(), job.stderr.read()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if job.returncode != 0 or len(lines) != 1 or lines[0].get("action") != "passed":
        log = bed.servers[code].log_file.read_text(errors="replace")[-3000:]
        raise AssertionError(f"{code}: the program's gate failed (exit {job.returncode}):"
                             f" {out} {err[-2000:]}\n{log}")  # fmt: skip
    return passed_at, lines[0]


def replicas_now(bed: JetStreamBed, code: str, stream: str) -> tuple[str, int]:
    """(leader, number of current replicas, the leader's own included) of `stream` right
    now; ("", 0) when no leader answers within a second."""
    try:
        info = asyncio.run(asyncio.wait_for(stream_info(bed, code, stream, timeout=1), 3))
    except (nats.errors.Error, OSError, ValueError):
        return "", 0
    group = info.get("cluster") or {}
    if not group.get("leader"):
        return "", 0
    followers = group.get("replicas") or []
    return str(group["leader"]), 1 + sum(1 for f in followers if f.get("current"))


# ==========================================================================================
# Writers
# ==========================================================================================
@dataclass
class Ack:
    seq: int  # the writer's sequence number, in the payload
    at: float  # monotonic time the PubAck arrived
    stream_seq: int
    duplicate: bool  # the server had it already (a retry of a stored message)
    attempts: int


@dataclass
class Writer:
    """One publisher: sequence numbers 0, 1, 2, ... one at a time, each retried (same
    Nats-Msg-Id) until acknowledged, so its acknowledged writes are exactly 0..len(acks)-1."""

    stream: str
    subject: str
    acks: list[Ack] = field(default_factory=list)
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    gave_up: str = ""  # the message it was still retrying when told to stop (never acked)

    def gaps(self) -> list[tuple[float, float]]:
        """(previous ack, next ack) of each pair of consecutive acks."""
        return [(a.at, b.at) for a, b in zip(self.acks, self.acks[1:], strict=False)]

    def longest_gap(self) -> tuple[float, float]:
        """(previous ack, next ack) around the longest pause."""
        return max(self.gaps(), key=lambda gap: gap[1] - gap[0], default=(0.0, 0.0))

    def max_gap(self, start: float = float("-inf"), end: float = float("inf")) -> float:
        """The longest time between two acks among the gaps that END in [start, end)."""
        return max((b - a for a, b in self.gaps() if start <= b < end), default=0.0)


def payload(writer: Writer, seq: int) -> bytes:
    return json.dumps({"stream": writer.stream, "seq": seq}).encode()


class Publisher:
    """Writers, one per (stream, subject), on one nats-py connection in a thread of its own.

    The connection knows all servers and reconnects to whichever is up; a publish that
    fails (timeout, no responders, 503 while a stream elects a leader, a dropped connection)
    is repeated with the same Nats-Msg-Id until acked, so a retry of a message the stream
    already stored is deduplicated by the server, not stored twice.
    """

    def __init__(self, urls: Sequence[str], user: str, password: str,
                 targets: Iterable[tuple[str, str]], run_id: str,
                 ack_timeout: float = 0.5) -> None:  # fmt: skip
        self.urls, self.user, self.password = list(urls), user, password
        self.writers = [Writer(stream, subject) for stream, subject in targets]
        self.run_id = run_id
        self.ack_timeout = ack_timeout
        self.reconnects = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self, timeout: float = 20.0) -> None:
        """Start writing; returns once every writer has had its first ack."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not all(writer.acks for writer in self.writers):
            if self._error is not None or not self._thread.is_alive():
                raise AssertionError(f"publisher ended: {self._error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no first ack within {timeout}s: {self.writers}")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after each writer's current message is acked (bounded by `timeout`)."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"publisher still runs {timeout}s after stop: {self.writers}")
        if self._error is not None:
            raise AssertionError(f"publisher failed: {self._error!r}") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # reported by start/stop
            self._error = error

    async def _main(self) -> None:
        async def swallow(error: Exception) -> None:
            pass

        async def reconnected() -> None:
            self.reconnects += 1

        connection: Client = await nats.connect(
            self.urls, user=self.user, password=self.password, error_cb=swallow,
            reconnected_cb=reconnected, connect_timeout=2, allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=0.1, dont_randomize=True,
        )  # fmt: skip
        js = connection.jetstream(timeout=self.ack_timeout)
        hard_stop = 0.0  # a writer still retrying this long after stop() gives up

        async def write(writer: Writer) -> None:
            nonlocal hard_stop
            seq, attempts = 0, 0
            while True:
                if self._stop.is_set():
                    hard_stop = hard_stop or time.monotonic() + 20
                    if attempts == 0 or time.monotonic() > hard_stop:
                        if attempts:
                            writer.gave_up = f"{writer.stream} seq {seq}"
                        return
                msg_id = f"{self.run_id}.{writer.stream}.{seq}"
                attempts += 1
                try:
                    ack = await js.publish(writer.subject, payload(writer, seq),
                                           stream=writer.stream,
                                           headers={"Nats-Msg-Id": msg_id})  # fmt: skip
                except (nats.errors.Error, OSError) as error:
                    writer.retries += 1
                    writer.errors[type(error).__name__] += 1
                    await asyncio.sleep(0.02)
                    continue
                writer.acks.append(Ack(seq, time.monotonic(), ack.seq, bool(ack.duplicate),
                                       attempts))  # fmt: skip
                seq, attempts = seq + 1, 0

        try:
            await asyncio.gather(*(write(writer) for writer in self.writers))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)


# ==========================================================================================
# Reading back and judging
# ==========================================================================================
async def read_stream(bed: JetStreamBed, code: str, stream: str,
                      timeout: float = 30.0) -> list[dict[str, Any]]:  # fmt: skip
    """Every message of `stream` in order, as {"stream_seq", "stream", "seq"} (payload)."""
    nc = await bed.connect(code)
    found: list[dict[str, Any]] = []
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info(stream)
        last = info.state.last_seq
        if not info.state.messages:
            return found
        subscription = await js.subscribe(">", stream=stream, ordered_consumer=True)
        deadline = time.monotonic() + timeout
        while True:
            message = await subscription.next_msg(timeout=max(0.1, deadline - time.monotonic()))
            record = json.loads(message.data)
            record["stream_seq"] = message.metadata.sequence.stream
            found.append(record)
            if record["stream_seq"] >= last:
                break
        await subscription.unsubscribe()
    finally:
        await nc.close()
    return found


@dataclass
class Tally:
    """A writer's acknowledged messages against what the stream holds."""

    stream: str
    acked: int
    stored: int  # this writer's messages in the stream
    lost: int  # acknowledged, not stored
    duplicated: int  # stored more than once
    unacked_stored: int  # stored, never acknowledged (a message in flight when writing ended)
    stream_seq_mismatch: int  # stored at another stream sequence than its PubAck said
    retries: int
    duplicate_acks: int  # acks that said "duplicate": a retry met its stored original
    max_gap: float

    def line(self) -> str:
        return (f"{self.stream}: acked {self.acked}, stored {self.stored}, lost {self.lost},"
                f" duplicated {self.duplicated}, unacked stored {self.unacked_stored},"
                f" seq mismatches {self.stream_seq_mismatch}, retries {self.retries},"
                f" duplicate acks {self.duplicate_acks}, longest pause {self.max_gap:.3f}s")  # fmt: skip


def tally(writer: Writer, stored: Sequence[dict[str, Any]]) -> Tally:
    mine = [record for record in stored if record.get("stream") == writer.stream]
    counts = Counter(int(record["seq"]) for record in mine)
    acked = {ack.seq for ack in writer.acks}
    where = {int(record["seq"]): int(record["stream_seq"]) for record in mine}
    return Tally(
        stream=writer.stream,
        acked=len(writer.acks),
        stored=len(mine),
        lost=sum(1 for seq in acked if counts[seq] == 0),
        duplicated=sum(count - 1 for count in counts.values() if count > 1),
        unacked_stored=sum(1 for seq in counts if seq not in acked),
        stream_seq_mismatch=sum(
            1 for ack in writer.acks if where.get(ack.seq, ack.stream_seq) != ack.stream_seq
        ),
        retries=writer.retries,
        duplicate_acks=sum(1 for ack in writer.acks if ack.duplicate),
        max_gap=writer.max_gap(),
    )


def step_pauses(writer: Writer, steps: Sequence[Step]) -> dict[str, float]:
    """Each step's longest pause between two acks: the gaps that end between its SIGTERM and
    the next step's (the last step's run to the end of writing)."""
    bounds = [step.stopped_at for step in steps] + [float("inf")]
    return {step.code: writer.max_gap(bounds[i], bounds[i + 1]) for i, step in enumerate(steps)}


async def stream_info(
    bed: JetStreamBed, code: str, stream: str, timeout: float = 3.0
) -> dict[str, Any]:
    """STREAM.INFO as the JetStream API answers it (the stream leader's view), through `code`."""
    nc = await bed.connect(code)
    try:
        reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=timeout)
        info: dict[str, Any] = json.loads(reply.data)
        return info
    finally:
        await nc.close()


def settled_info(bed: JetStreamBed, code: str, stream: str, replicas: int,
                 timeout: float = 20.0) -> dict[str, Any]:  # fmt: skip
    """Stream info once the stream has a leader and all its replicas are current, lag 0."""
    deadline = time.monotonic() + timeout
    latest: dict[str, Any] = {}
    while True:
        with contextlib.suppress(nats.errors.Error, OSError, ValueError):
            latest = asyncio.run(stream_info(bed, code, stream))
        group = latest.get("cluster") or {}
        followers = group.get("replicas") or []
        if (group.get("leader") and len(followers) == replicas - 1
                and all(f.get("current") and not f.get("lag") for f in followers)):  # fmt: skip
            return latest
        if time.monotonic() > deadline:
            raise AssertionError(f"{stream} not settled with {replicas} current replicas"
                                 f" within {timeout}s: {latest}")  # fmt: skip
        time.sleep(0.2)


@dataclass
class Outcome:
    """Everything one rollout under write load showed."""

    gate: Gate
    versions_before: dict[str, str]
    versions_after: dict[str, str]
    steps: list[Step]
    writers: list[Writer]
    tallies: dict[str, Tally]
    pauses: dict[str, dict[str, float]]  # stream -> step code -> longest pause
    global_info: dict[str, Any]  # GLOBAL_EVENTS' STREAM.INFO once settled
    local_states: dict[str, dict[str, Any] | None]  # GLOBAL_EVENTS' replica on each server
    reapplied: dict[str, str]  # the stream job run again after the rollout
    reconnects: int
    roll_seconds: float
    logs: dict[str, str] = field(repr=False, default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"rollout gate={self.gate}: {self.versions_before} -> {self.versions_after},"
               f" roll {self.roll_seconds:.2f}s, publisher reconnects {self.reconnects}"]  # fmt: skip
        for step in self.steps:
            pauses = ", ".join(f"{stream} {by_step[step.code]:.3f}s"
                               for stream, by_step in self.pauses.items())  # fmt: skip
            leader, current = step.stream_when_left
            replicas = ("" if step.gate == "listening" else
                        f", GLOBAL_EVENTS leader {leader or 'none'} with {current} current"
                        " replicas")  # fmt: skip
            if step.gate_report:
                replicas += (f", program gate passed after {step.gate_report.get('looks')}"
                             f" looks: {step.gate_report}")  # fmt: skip
            out.append(
                f"  {step.code}: {step.from_version}->{step.to_version}, GLOBAL_EVENTS leader"
                f" before {step.stream_leader_before or '?'}, exit {step.exit_seconds:.3f}s"
                f" (clean {step.clean_exit}), listening {step.down_seconds:.3f}s, /healthz 200"
                f" {step.healthy_seconds:.3f}s, moved on {step.gate_seconds:.3f}s after"
                f" SIGTERM; then /healthz 200:"
                f" {step.healthy_when_left} {step.health_when_left}{replicas}; longest pause"
                f" {pauses}"
            )
        first = self.steps[0].stopped_at if self.steps else 0.0
        stops = ", ".join(f"{step.code} +{step.stopped_at - first:.3f}s" for step in self.steps)
        out.append(f"  SIGTERMs (from the first): {stops}")
        for writer in self.writers:
            start, end = writer.longest_gap()
            out.append(f"  {writer.stream}: longest pause from +{start - first:.3f}s"
                       f" to +{end - first:.3f}s")  # fmt: skip
        out.extend(f"  {tally.line()}" for tally in self.tallies.values())
        return out


def roll_under_load(workdir: Path, binary: Path, gate: Gate,
                    targets: Sequence[tuple[str, str]], *, order: Sequence[str] | None = None,
                    before: float = 1.0, after: float = 1.0, ack_timeout: float = 0.5,
                    gate_timeout: float = HEALTH_TIMEOUT,
                    start_binary: str | Path | None = None) -> Outcome:  # fmt: skip
    """A fresh cluster on `start_binary` (default: the venv's nats-server) with the program's
    streams, rolled to `binary`; writers on `targets` from `before` seconds ahead of the
    first stop to `after` seconds past the last server's /healthz 200; then what the streams
    hold."""
    with RolloutBed(workdir, start_binary) as bed:
        codes = list(order or bed.servers)
        versions_before = {code: bed.version(code) for code in bed.servers}
        publisher = Publisher([bed.url(code) for code in bed.servers], bed.user, bed.password,
                              targets, run_id=f"{gate}-{os.getpid()}",
                              ack_timeout=ack_timeout)  # fmt: skip
        publisher.start()
        try:
            time.sleep(before)
            started = time.monotonic()
            steps = roll(bed, codes, binary, gate, timeout=gate_timeout)
            roll_seconds = time.monotonic() - started
            time.sleep(after)
        finally:
            publisher.stop()
        global_info = settled_info(bed, codes[-1], "GLOBAL_EVENTS", len(bed.servers))
        tallies = {}
        for writer in publisher.writers:
            stored = asyncio.run(read_stream(bed, codes[0], writer.stream))
            tallies[writer.stream] = tally(writer, stored)
        local_states = {code: bed.local_state(code, "GLOBAL_EVENTS") for code in bed.servers}
        reapplied = bed.apply_program_streams()
        return Outcome(
            gate=gate,
            versions_before=versions_before,
            versions_after={code: bed.version(code) for code in bed.servers},
            steps=steps,
            writers=publisher.writers,
            tallies=tallies,
            pauses={writer.stream: step_pauses(writer, steps) for writer in publisher.writers},
            global_info=global_info,
            local_states=local_states,
            reapplied=reapplied,
            reconnects=publisher.reconnects,
            roll_seconds=roll_seconds,
            logs={code: bed.log_of(code) for code in bed.servers},
        )
