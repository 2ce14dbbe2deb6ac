"""The system account's user in the rendered NATS config, on every nats-server release at hand.

Why: removing a retired pod's server from the JetStream meta group (`$JS.API.SERVER.REMOVE`)
and reading the meta group need the system account, so render/nats.py gives `$SYS` a user.
A running stack gets it by a config change, which the program applies with SIGHUP: only
real servers can show that the config loads, that the reload alone (no restart) brings the
user in, and that the client user in the global account goes on exactly as before: its open
connections, its JetStream, and no way into the system account's subjects.

Each release (tests/support/nats_releases.py) runs the dev stack's three servers first with
the config as it was (no system account), then reloads the rendered one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import nats
import nats.errors
import pytest

from tests.support.jetstream_bed import JetStreamBed
from tests.support.nats_releases import releases
from unityplan_infra.render.nats import SYSTEM_ACCOUNT, SYSTEM_USER

pytestmark = pytest.mark.timeout(60)


@dataclass
class Reloaded:
    version: str
    system_before: str  # what connecting as the system user gave before the reload
    pids_before: dict[str, int]
    pids_after: dict[str, int]
    reload_lines: dict[str, list[str]]
    events: list[str] = field(default_factory=list)  # the client connection's callbacks
    acks: list[int] = field(default_factory=list)  # stream sequences, before and after
    meta: dict[str, object] = field(default_factory=dict)  # JSZ as the system user got it
    client_sys: str = ""  # a client-account request to a system subject
    wrong_password: str = ""


async def _scenario(bed: JetStreamBed, outcome: Reloaded) -> None:
    events: list[str] = []

    async def disconnected() -> None:
        events.append("disconnected")

    async def reconnected() -> None:
        events.append("reconnected")

    client = await nats.connect(bed.url("dk"), user=bed.user, password=bed.password,
                                disconnected_cb=disconnected, reconnected_cb=reconnected)  # fmt: skip
    js = client.jetstream(timeout=2)
    try:
        outcome.acks.append((await _publish(js, b"before")).seq)
        try:
            await bed.connect("dk", system=True)
            outcome.system_before = "connected"
        except (nats.errors.Error, OSError, TimeoutError) as error:
            outcome.system_before = f"{type(error).__name__}: {error}"
        bed.system_account = True  # the config as rendered now
        bed.use_deployment(bed.deployment)
        for code in bed.servers:
            bed.reload(code)
        outcome.acks.append((await _publish(js, b"after")).seq)
        system = await bed.connect("se", system=True)
        try:
            reply = await system.request("$SYS.REQ.SERVER.PING.JSZ",
                                         json.dumps({"leader_only": True}).encode(), timeout=3)  # fmt: skip
            outcome.meta = json.loads(reply.data)["data"]["meta_cluster"]
        finally:
            await system.close()
        try:
            await client.request("$SYS.REQ.SERVER.PING.JSZ", b"{}", timeout=1)
            outcome.client_sys = "answered"
        except nats.errors.NoRespondersError:
            outcome.client_sys = "no responders"
        except nats.errors.TimeoutError:
            outcome.client_sys = "timeout"
        try:
            wrong = await asyncio.wait_for(nats.connect(
                bed.url("no"), user=SYSTEM_USER, password="wrong", error_cb=_quiet,
                allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=2,
            ), 10)  # fmt: skip
            await wrong.close()
            outcome.wrong_password = "connected"
        except (nats.errors.Error, OSError) as error:
            outcome.wrong_password = f"{type(error).__name__}: {error}"
        outcome.events = list(events)  # up to here: its own close() disconnects it, too
    finally:
        await client.close()


async def _quiet(error: Exception) -> None:
    pass


async def _publish(js: nats.js.JetStreamContext, data: bytes) -> nats.js.api.PubAck:
    deadline = time.monotonic() + 15
    while True:
        try:
            return await js.publish("global.system-account", data)
        except nats.errors.Error:  # a stream leader still being elected right after start
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module", params=sorted(releases()), ids=lambda version: version)
def reloaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Reloaded]:  # fmt: skip
    version: str = request.param
    workdir = tmp_path_factory.mktemp(f"system-account-{version}")
    with JetStreamBed(workdir, system_account=False, binary=releases()[version]) as bed:
        pids = {code: server.process.pid for code, server in bed.servers.items()
                if server.process is not None}  # fmt: skip
        outcome = Reloaded(version, "", pids, {}, {})
        asyncio.run(_scenario(bed, outcome))
        outcome.pids_after = {code: server.process.pid for code, server in bed.servers.items()
                              if server.process is not None and server.running()}  # fmt: skip
        outcome.reload_lines = {
            code: [line for line in bed.log_text(code).splitlines() if "Reloaded" in line]
            for code in bed.servers
        }
        print(f"\n{version}: system user before the reload: {outcome.system_before}; after:"
              f" meta leader {outcome.meta.get('leader')}; client connection events"
              f" {outcome.events}, acks {outcome.acks}; same processes"
              f" {outcome.pids_after == outcome.pids_before}")  # fmt: skip
        yield outcome


def test_the_system_user_exists_only_once_the_rendered_config_is_loaded(
    reloaded: Reloaded,
) -> None:
    assert "Authorization Violation" in reloaded.system_before, reloaded.system_before
    assert reloaded.meta["cluster_size"] == 3, reloaded.meta
    assert reloaded.meta["leader"], reloaded.meta


def test_sighup_is_enough_no_restart(reloaded: Reloaded) -> None:
    assert reloaded.pids_after == reloaded.pids_before
    for code, lines in reloaded.reload_lines.items():
        assert any("Reloaded: accounts" in line for line in lines), (code, lines)


def test_the_client_user_goes_on_as_before(reloaded: Reloaded) -> None:
    assert reloaded.events == [], reloaded.events  # its connection stayed open throughout
    assert reloaded.acks == [1, 2], reloaded.acks  # JetStream before and after the reload
    # The system account's subjects are not the global account's.
    assert reloaded.client_sys == "no responders", reloaded.client_sys


def test_a_wrong_system_password_is_refused(reloaded: Reloaded) -> None:
    assert "Authorization Violation" in reloaded.wrong_password, reloaded.wrong_password


def test_the_account_is_nats_servers_own_system_account() -> None:
    assert SYSTEM_ACCOUNT == "$SYS"
