"""Retiring a pod's NATS server on real servers: the stream job's hand-over under write load.

Why: a pod leaves in two steps. With `leaving: true` it is still deployed and routed and the
job hands its share over: its R1 TERRITORY stream must move, with every message, to a server
that stays; GLOBAL_EVENTS (R3) must get a replica elsewhere for the one it had there, without
losing its quorum; and the JetStream meta group must not keep the server as a dead peer.
With `retired: true` the others drop its route, the job runs again and must find nothing to
do without the server (in the multi-host layout its WireGuard peer is gone by then), and
its container is stopped. Only real servers can show that the program's job (nats/
retire.py, run as the zip archive `pulumi up` ships) does it, and what writers see meanwhile.

`retire_under_load` is the whole procedure on loopback, with the servers of
tests/support/jetstream_bed.py: the dev stack's dk, no, se with the program's streams, then
a 4th pod (fi) added as `pulumi up` adds one (configs rendered again, SIGHUP, new server);
the server to retire made the leader of GLOBAL_EVENTS and of the meta group (the worst
case); publishers on GLOBAL_EVENTS (throughout) and on the retired pod's TERRITORY stream
(until just before the hand-over). Step 1: the job with the spec of the deployment where
that pod has `leaving: true`, while every server runs with every route (a leaving pod is
still deployed; its configs and the others' render as before). Step 2: the others
reloaded with configs rendered from the deployment where that pod has `retired: true` (no
route to it), the retired server stopped with SIGTERM, and then the job again, with that
deployment's spec: the same `retired_servers` and streams as step 1's, in another order.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors

from tests.support.deployments import deployment_of
from tests.support.jetstream_bed import JetStreamBed
from tests.support.nats_rollout import (
    Publisher,
    Tally,
    Writer,
    read_stream,
    settled_info,
    stream_info,
    tally,
)
from tests.support.stackfile import stack_values
from tests.support.stream_job import job_argv
from unityplan_infra.nats.streams import GLOBAL_STREAM, stream_configs, territory_stream_name
from unityplan_infra.topology.plan import Deployment

NEW_POD = {"code": "fi", "name": "finland", "slot": 4}
JSZ_LEADER = "$SYS.REQ.SERVER.PING.JSZ"


def four_pods(*retired: str, leaving: tuple[str, ...] = ()) -> Deployment:
    """The dev stack with a 4th pod, fi; the pods `retired` have `retired: true`, the pods
    `leaving` `leaving: true`."""
    values = copy.deepcopy(stack_values("dev"))
    values["unityplan-infra:pods"].append(dict(NEW_POD))
    for pod in values["unityplan-infra:pods"]:
        if pod["code"] in retired:
            pod["retired"] = True
        if pod["code"] in leaving:
            pod["leaving"] = True
    return deployment_of(values)


# --- the job, as deploy runs it ------------------------------------------------------------
@dataclass
class JobRun:
    returncode: int
    lines: list[dict[str, Any]]
    started: float  # monotonic
    ended: float
    stderr: str

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def actions(self, key: str = "stream") -> list[tuple[str, str]]:
        return [(line[key], line["action"]) for line in self.lines if key in line and "action" in line]


def run_job(spec: dict[str, Any], timeout: float = 120.0) -> JobRun:
    """The program's stream job archive, spec on stdin, with no site-packages (-I -S)."""
    started = time.monotonic()
    result = subprocess.run(job_argv(), input=json.dumps(spec), capture_output=True, text=True,
                            timeout=timeout, check=False)  # fmt: skip
    ended = time.monotonic()
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return JobRun(result.returncode, lines, started, ended, result.stderr)


def streams_spec(bed: JetStreamBed, deployment: Deployment, code: str = "dk", **extra: Any
                 ) -> dict[str, Any]:  # fmt: skip
    return {"url": bed.url(code), "user": bed.user, "password": bed.password,
            "streams": stream_configs(deployment), **extra}  # fmt: skip


def retire_spec(bed: JetStreamBed, deployment: Deployment, code: str = "dk") -> dict[str, Any]:
    """What the program hands the job when `deployment` has leaving or retired pods."""
    return streams_spec(
        bed, deployment, code,
        retired_servers=[pod.nats_server_name for pod in deployment.handed_over],
        system_user=bed.system_user, system_password=bed.system_password,
    )  # fmt: skip


# --- the system account's view -------------------------------------------------------------
async def _meta(bed: JetStreamBed, code: str) -> dict[str, Any]:
    nc = await bed.connect(code, system=True)
    try:
        reply = await nc.request(JSZ_LEADER, json.dumps({"leader_only": True}).encode(), timeout=3)
        meta: dict[str, Any] = json.loads(reply.data)["data"]["meta_cluster"]
        return meta
    finally:
        await nc.close()


def meta_cluster(bed: JetStreamBed, code: str = "dk", timeout: float = 15.0) -> dict[str, Any]:
    """The meta group as its leader reports it (names, current, offline), via `code`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return asyncio.run(_meta(bed, code))
        except (nats.errors.Error, OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def meta_members(meta: dict[str, Any]) -> list[str]:
    return sorted([meta["leader"], *(r["name"] for r in meta.get("replicas") or [])])


async def _request(bed: JetStreamBed, code: str, subject: str, payload: bytes = b"",
                   system: bool = False) -> dict[str, Any]:  # fmt: skip
    nc = await bed.connect(code, system=system)
    try:
        reply = await nc.request(subject, payload, timeout=3)
        data: dict[str, Any] = json.loads(reply.data)
        return data
    finally:
        await nc.close()


def lead(bed: JetStreamBed, code: str, *, stream: str | None, attempts: int = 4) -> tuple[int, bool]:
    """Try to make `code`'s server the leader of `stream` (None: of the meta group) by
    stepping the leader down: 2.11 and later take the preferred server; 2.10 picks at random,
    so it may take a few. Returns (step-downs, whether it is the leader now)."""
    wanted = bed.server_name(code)
    preferred = tuple(int(part) for part in bed.version(code).split(".")[:2]) >= (2, 11)
    payload = json.dumps({"placement": {"preferred": wanted}}).encode() if preferred else b""

    def leader() -> str:
        with contextlib.suppress(nats.errors.Error, OSError, ValueError, KeyError):
            if stream is None:
                return str(meta_cluster(bed, code)["leader"])
            return str(asyncio.run(stream_info(bed, code, stream))["cluster"]["leader"])
        return ""

    stepdowns = 0
    current = leader()
    while current != wanted and stepdowns < attempts:
        if current:
            subject = (f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}" if stream
                       else "$JS.API.META.LEADER.STEPDOWN")  # fmt: skip
            with contextlib.suppress(nats.errors.Error, OSError, ValueError):
                asyncio.run(_request(bed, code, subject, payload, system=stream is None))
            stepdowns += 1
        deadline = time.monotonic() + 15
        while (now := leader()) in ("", current) and time.monotonic() < deadline:
            time.sleep(0.1)
        current = now
    return stepdowns, current == wanted


def wait_disabled(bed: JetStreamBed, code: str, timeout: float = 10.0) -> dict[str, Any]:
    """The server's /jsz once it reports JetStream disabled (AssertionError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        jsz = bed.monitor(code, "jsz")
        if jsz.get("disabled"):
            return jsz
        if time.monotonic() > deadline:
            raise AssertionError(f"{code} still runs JetStream: {jsz}\n{bed.log_text(code)[-3000:]}")
        time.sleep(0.1)


# --- the procedure -------------------------------------------------------------------------
@dataclass
class RetireOutcome:
    version: str
    retired: str  # server name
    # Whether the retired server led GLOBAL_EVENTS and the meta group when the job began,
    # and the step-downs it took to get there.
    led: dict[str, tuple[int, bool]]
    territory_before: dict[str, Any]  # the retired pod's TERRITORY stream before the job
    job: JobRun  # step 1
    rerun: JobRun  # step 2, with the retired server stopped
    rerun_while_retired_ran: bool  # whether the retired server's process ran during step 2
    global_writer: Writer
    territory_writer: Writer
    tallies: dict[str, Tally]
    global_info: dict[str, Any]  # settled, after everything
    territory_info: dict[str, Any]
    meta_after_job: dict[str, Any]
    meta_after: dict[str, Any]  # after step 2
    retired_jsz: dict[str, Any]  # the retired server's own /jsz after the job
    retired_log: str = field(repr=False)
    logs: dict[str, str] = field(repr=False, default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)  # monotonic times of the steps

    def pause(self, start: str, end: str) -> float:
        """GLOBAL_EVENTS' longest wait for an ack among the gaps ending in [start, end)."""
        return self.global_writer.max_gap(self.marks[start], self.marks[end])

    def lines(self) -> list[str]:
        t0 = self.marks["job"]
        out = [f"retire {self.retired} on nats-server {self.version}: leader (step-downs"
               f" taken) of {self.led}"]  # fmt: skip
        out.append(f"  job: exit {self.job.returncode} in {self.job.seconds:.2f}s")
        out.extend(f"    +{line.get('seconds', 0):.2f}s {json.dumps(line)}"
                   for line in self.job.lines)  # fmt: skip
        out.append(f"  step 2 (retired server stopped): exit {self.rerun.returncode} in"
                   f" {self.rerun.seconds:.2f}s:"
                   f" {self.rerun.actions() + self.rerun.actions('server')}")  # fmt: skip
        for name, mark in self.marks.items():
            out.append(f"  {name}: +{mark - t0:.3f}s")
        out.append(f"  GLOBAL_EVENTS longest pause: before the job"
                   f" {self.pause('writing', 'job'):.3f}s, during the job"
                   f" {self.pause('job', 'job done'):.3f}s, reload + stop + job again"
                   f" {self.pause('job done', 'written'):.3f}s, overall"
                   f" {self.global_writer.max_gap():.3f}s")  # fmt: skip
        out.extend(f"  {count.line()}" for count in self.tallies.values())
        out.append(f"  meta after: {meta_members(self.meta_after)} leader"
                   f" {self.meta_after['leader']}")  # fmt: skip
        return out


def retire_under_load(workdir: Path, binary: str | Path, retire: str = "se",
                      *, writing_before: float = 1.5, writing_after: float = 1.0,
                      ack_timeout: float = 0.5) -> RetireOutcome:  # fmt: skip
    """The procedure of the module doc; everything it saw."""
    grown, leaving, shrunk = four_pods(), four_pods(leaving=(retire,)), four_pods(retire)
    territory = territory_stream_name(shrunk.retired[0])
    with JetStreamBed(workdir, binary=binary) as bed:
        version = bed.version("dk")
        # A pod is added as `pulumi up` adds one: every config rendered again, SIGHUP, start.
        for code in bed.use_deployment(grown):
            bed.start_server(code)
        for code in ("dk", "no", "se"):
            bed.reload(code)
        bed.wait_formed(30)
        bed.apply_program_streams()
        led = {"meta": lead(bed, retire, stream=None),
               GLOBAL_STREAM: lead(bed, retire, stream=GLOBAL_STREAM)}  # fmt: skip
        staying = [code for code in bed.servers if code != retire]
        run_id = f"retire-{os.getpid()}-{version}"
        global_pub = Publisher([bed.url(code) for code in staying], bed.user, bed.password,
                               [(GLOBAL_STREAM, "global.retire")], run_id=run_id,
                               ack_timeout=ack_timeout)  # fmt: skip
        territory_pub = Publisher([bed.url(retire)], bed.user, bed.password,
                                  [(territory, f"territory.{retire}.retire")], run_id=run_id,
                                  ack_timeout=ack_timeout)  # fmt: skip
        marks: dict[str, float] = {}
        global_pub.start()
        try:
            territory_pub.start()
            marks["writing"] = time.monotonic()
            time.sleep(writing_before)
            territory_pub.stop()  # the retired pod's own writers end before the hand-over
            territory_before = asyncio.run(stream_info(bed, "dk", territory))
            # Step 1 (`leaving: true`): every server runs, with every route (the leaving
            # pod's configs are rendered as before: nothing to reload).
            bed.use_deployment(leaving)
            marks["job"] = time.monotonic()
            job = run_job(retire_spec(bed, leaving))
            marks["job done"] = time.monotonic()
            meta_after_job = meta_cluster(bed, "dk")
            # The retired server runs on; its JetStream shuts down by itself once it sees its
            # removal (its /jsz then says "disabled").
            retired_jsz = wait_disabled(bed, retire)
            marks["retired disabled"] = time.monotonic()
            retired_log = bed.log_text(retire)
            # Step 2 (`retired: true`): the others get configs without its route and reload
            # them; the retired server is unreachable from the job (stopped here: docker
            # stop, SIGTERM) when the job runs again with the same spec.
            bed.use_deployment(shrunk)
            for code in staying:
                bed.reload(code)
            marks["reloaded"] = time.monotonic()
            bed.stop_server(retire)
            marks["retired stopped"] = time.monotonic()
            rerun_while_retired_ran = bed.servers[retire].running()
            rerun = run_job(retire_spec(bed, shrunk))
            marks["job again done"] = time.monotonic()
            bed.forget(retire)
            time.sleep(writing_after)
            marks["written"] = time.monotonic()
        finally:
            global_pub.stop()
        bed.wait_formed(30)
        meta_after = meta_cluster(bed, "dk")
        global_info = settled_info(bed, "dk", GLOBAL_STREAM, 3)
        territory_info = settled_info(bed, "dk", territory, 1)
        tallies = {}
        for writer in (*global_pub.writers, *territory_pub.writers):
            stored = asyncio.run(read_stream(bed, "dk", writer.stream))
            tallies[writer.stream] = tally(writer, stored)
        return RetireOutcome(
            version=version, retired=bed.deployment.retired[0].nats_server_name,
            led=led, territory_before=territory_before, job=job,
            rerun=rerun, rerun_while_retired_ran=rerun_while_retired_ran,
            global_writer=global_pub.writers[0],
            territory_writer=territory_pub.writers[0], tallies=tallies,
            global_info=global_info, territory_info=territory_info,
            meta_after_job=meta_after_job, meta_after=meta_after, retired_jsz=retired_jsz,
            retired_log=retired_log,
            logs={code: bed.log_text(code) for code in bed.servers}, marks=marks,
        )  # fmt: skip
