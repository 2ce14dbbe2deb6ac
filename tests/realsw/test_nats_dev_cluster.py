"""Real nats-server processes run the dev stack's generated NATS configs.

Why: unit tests can only compare the rendered dict with expectations. Whether nats-server
accepts it, whether the three pods really form `unityplan-global` over authenticated routes,
and whether the program's own stream job gives GLOBAL_EVENTS and TERRITORY_<CODE> the
replicas and placement the plan intends, only real servers can tell.

Each pod's server runs in its own network namespace (an emulated host, see
tests/support/netns.py) whose /etc/hosts resolves `service-nats-<code>` the way Docker's
network DNS does in the single-host layout, so the configs run with nothing changed but the
JetStream store directory. Clients (curl, nats-py helper scripts, apply_streams.py) run
inside the namespaces too: the test process itself stays in the root namespace, which has no
way into the lab.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.support.deployments import dev_deployment
from tests.support.netns import Background, NetnsError, NetnsLab, wait_until
from tests.support.stackfile import as_pulumi_config
from tests.support.stream_job import job_argv
from unityplan_infra.config.errors import ConfigError
from unityplan_infra.config.models import Images, StackConfig
from unityplan_infra.deployment import load_deployment
from unityplan_infra.nats.streams import GLOBAL_STREAM, stream_configs, territory_stream_name
from unityplan_infra.render.nats import CLIENT_USER, CLUSTER_NAME, nats_config
from unityplan_infra.topology.plan import Deployment, PodPlan, plan_deployment

REPO = Path(__file__).resolve().parents[2]
STACK_FILE = REPO / "Pulumi.dev.yaml"
SPARE = {"code": "fi", "name": "finland", "slot": 4}  # a pod that joins late

# URL-special characters: the renderer must percent-encode the password in route URLs.
ROUTE_PASSWORD = "r0ute:p@ss/w%rd?#"
CLIENT_PASSWORD = f"client-{uuid.uuid4().hex}"
SYSTEM_PASSWORD = f"system-{uuid.uuid4().hex}"
FORM_SECONDS = 30.0

# Helper programs run with the venv's python inside a namespace (nats-py is installed there).
REQUEST_SCRIPT = """
import asyncio, os, sys
import nats

async def main() -> None:
    nc = await nats.connect(os.environ["NATS_URL"], user=os.environ["NATS_USER"],
                            password=os.environ["NATS_PASSWORD"], allow_reconnect=False)
    try:
        reply = await nc.request(sys.argv[1], sys.argv[2].encode(), timeout=5)
        print(reply.data.decode())
    finally:
        await nc.close()

asyncio.run(main())
"""

SUBSCRIBE_SCRIPT = """
import asyncio, json, os, sys
import nats

async def main() -> None:
    nc = await nats.connect(os.environ["NATS_URL"], user=os.environ["NATS_USER"],
                            password=os.environ["NATS_PASSWORD"])
    sub = await nc.subscribe(sys.argv[1])
    await nc.flush()
    print("ready", flush=True)
    msg = await sub.next_msg(timeout=float(sys.argv[2]))
    print(json.dumps({"subject": msg.subject, "data": msg.data.decode()}), flush=True)
    await nc.close()

asyncio.run(main())
"""

CONNECT_SCRIPT = """
import asyncio, os
import nats

async def swallow(error: Exception) -> None:
    pass

async def main() -> None:
    try:
        nc = await nats.connect(os.environ["NATS_URL"], user=os.environ["NATS_USER"],
                                password=os.environ["NATS_PASSWORD"], allow_reconnect=False,
                                max_reconnect_attempts=0, connect_timeout=3,
                                error_cb=swallow)
    except Exception as error:
        print(f"rejected: {error!r}")
        return
    await nc.flush()
    print("connected")
    await nc.close()

asyncio.run(main())
"""


@dataclass(frozen=True)
class Cluster:
    """The running dev cluster: one nats-server per pod, each in the pod's namespace."""

    deployment: Deployment
    lab: NetnsLab
    servers: dict[str, Background]  # by pod code

    def pod(self, code: str) -> PodPlan:
        return self.deployment.pod(code)

    def client_env(self, code: str, password: str = CLIENT_PASSWORD) -> dict[str, str]:
        """Client settings that reach `code`'s server by its container name."""
        host, port = self.pod(code).nats_client
        return {"NATS_URL": f"nats://{host}:{port}", "NATS_USER": CLIENT_USER,
                "NATS_PASSWORD": password}  # fmt: skip

    def monitor(self, code: str, path: str) -> dict[str, Any]:
        """GET a monitoring endpoint of `code`'s server from inside its namespace."""
        pod = self.pod(code)
        url = f"http://{pod.nats_host}:{pod.nats_ports['monitor']}/{path}"
        result = self.lab.run(code, ["curl", "-sf", "--max-time", "3", url])
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def python(self, code: str, script: str, *args: str, env: dict[str, str]) -> str:
        """Run a helper program with the venv's python inside `code`'s namespace."""
        result = self.lab.run(code, [sys.executable, "-c", script, *args], env=env, timeout=30)
        return result.stdout

    def request(self, code: str, subject: str, payload: Any = "") -> dict[str, Any]:
        """A NATS request through `code`'s server; JetStream API replies are JSON."""
        text = payload if isinstance(payload, str) else json.dumps(payload)
        reply: dict[str, Any] = json.loads(
            self.python(code, REQUEST_SCRIPT, subject, text, env=self.client_env(code))
        )
        return reply

    def apply_streams(self, code: str) -> dict[str, str]:
        """Run the program's stream job as a script, the way `pulumi up` runs it."""
        env = {**self.client_env(code), "STREAMS_JSON": json.dumps(stream_configs(self.deployment))}
        result = self.lab.run(code, job_argv(), env=env, timeout=150)
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        return {line["stream"]: line["action"] for line in lines}

    def logs(self) -> str:
        return "\n".join(f"=== {code}\n{server.output()}" for code, server in self.servers.items())


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployment() -> Deployment:
    """The dev stack as the program sees it (ruamel: YAML 1.2 keeps Norway's "no" a string)."""
    document = YAML(typ="safe").load(STACK_FILE.read_text())
    return load_deployment(document["config"])


@pytest.fixture(scope="module")
def lab(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsLab]:
    """One emulated host per pod, plus one for a pod that joins late; every host resolves
    every pod's NATS container name."""
    codes = [pod.code for pod in deployment.pods]
    with NetnsLab([*codes, SPARE["code"]], workdir=tmp_path_factory.mktemp("netns")) as lab:
        for pod in with_spare(deployment).pods:
            lab.alias(pod.code, pod.nats_host)
        yield lab


def with_spare(deployment: Deployment) -> Deployment:
    """The dev stack with the late pod added, as the program would plan it."""
    values = deployment.config.model_dump(by_alias=True, exclude_none=True)
    values["pods"].append(SPARE)
    return plan_deployment(StackConfig.model_validate(values))


@pytest.fixture(scope="module")
def cluster(
    deployment: Deployment, lab: NetnsLab, tmp_path_factory: pytest.TempPathFactory
) -> Cluster:
    """Start one real nats-server per pod from its generated config; wait until it formed."""
    servers: dict[str, Background] = {}
    for pod in deployment.pods:
        directory = tmp_path_factory.mktemp(f"nats-{pod.code}")
        config = nats_config(
            deployment, pod, route_password=ROUTE_PASSWORD, client_password=CLIENT_PASSWORD,
            system_password=SYSTEM_PASSWORD, store_dir=str(directory / "jetstream"),
        )  # fmt: skip
        path = directory / "nats.json"
        path.write_text(json.dumps(config, indent=2))
        servers[pod.code] = lab.spawn(pod.code, ["nats-server", "-c", str(path)], name="nats")
    running = Cluster(deployment, lab, servers)
    wait_until(lambda: _formed(running), timeout=FORM_SECONDS,
               what=lambda: f"cluster {CLUSTER_NAME} formed\n{running.logs()}")  # fmt: skip
    return running


@pytest.fixture(scope="module")
def first_apply(cluster: Cluster) -> dict[str, str]:
    """Actions of the stream job's first run on the fresh cluster."""
    return cluster.apply_streams("dk")


def _formed(cluster: Cluster) -> bool:
    """Every server routes to all others and JetStream has a meta leader over all pods."""
    for code, server in cluster.servers.items():
        if not server.running():
            raise AssertionError(f"nats-server of {code} exited:\n{server.output()}")
    try:
        ids = {code: cluster.monitor(code, "varz")["server_id"] for code in cluster.servers}
        for code in cluster.servers:
            if _route_ids(cluster, code) != {ids[other] for other in ids if other != code}:
                return False
            meta = cluster.monitor(code, "jsz").get("meta_cluster", {})
            if not meta.get("leader") or meta.get("cluster_size") != len(cluster.servers):
                return False
    except (NetnsError, json.JSONDecodeError, KeyError):  # not listening yet
        return False
    return True


def _route_ids(cluster: Cluster, code: str) -> set[str]:
    return {route["remote_id"] for route in cluster.monitor(code, "routez").get("routes") or []}


def _stream_info(cluster: Cluster, name: str, via: str = "no") -> dict[str, Any]:
    return cluster.request(via, f"$JS.API.STREAM.INFO.{name}")


def _settled_info(cluster: Cluster, name: str, replicas: int) -> dict[str, Any]:
    """Stream info once the stream has a leader and all its replicas are current."""
    latest: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal latest
        latest = _stream_info(cluster, name)
        group = latest.get("cluster", {})
        followers = group.get("replicas") or []
        return (
            bool(group.get("leader"))
            and len(followers) == replicas - 1
            and all(follower.get("current") for follower in followers)
        )

    wait_until(settled, timeout=20, interval=0.3, what=lambda: f"{name} settled: {latest}")
    return latest


# --- tests ---------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_lab_hosts_have_no_route_out(lab: NetnsLab) -> None:
    """The emulated hosts reach each other only: no default route, only the lab subnet."""
    assert lab.leaks() == []


@pytest.mark.timeout(120)
def test_pods_form_the_global_cluster_with_a_full_mesh_of_routes(cluster: Cluster) -> None:
    ids = {code: cluster.monitor(code, "varz")["server_id"] for code in cluster.servers}
    for code in cluster.servers:
        varz = cluster.monitor(code, "varz")
        assert varz["server_name"] == cluster.pod(code).nats_server_name
        assert varz["cluster"]["name"] == CLUSTER_NAME
        routez = cluster.monitor(code, "routez")
        peers = _route_ids(cluster, code)
        assert peers == {ids[o] for o in ids if o != code}, routez  # N-1 routed peers
        if not varz["cluster"].get("pool_size"):  # 2.9: one connection per peer; 2.10+ pools
            assert routez["num_routes"] == len(cluster.servers) - 1, routez


@pytest.mark.timeout(180)
def test_first_stream_job_creates_every_stream(
    cluster: Cluster, first_apply: dict[str, str]
) -> None:
    names = [stream["name"] for stream in stream_configs(cluster.deployment)]
    assert first_apply == {name: "created" for name in names}


@pytest.mark.timeout(180)
def test_second_stream_job_changes_nothing(cluster: Cluster, first_apply: dict[str, str]) -> None:
    second = cluster.apply_streams("se")
    assert second == {name: "unchanged" for name in first_apply}


@pytest.mark.timeout(120)
def test_global_events_is_replicated_on_every_pod(
    cluster: Cluster, first_apply: dict[str, str]
) -> None:
    replicas = cluster.deployment.config.streams.global_replicas
    info = _settled_info(cluster, GLOBAL_STREAM, replicas)
    group = info["cluster"]
    assert info["config"]["num_replicas"] == replicas == 3
    assert group["name"] == CLUSTER_NAME
    members = {group["leader"], *(follower["name"] for follower in group["replicas"])}
    assert members == {pod.nats_server_name for pod in cluster.deployment.pods}


@pytest.mark.timeout(120)
def test_each_territory_stream_lives_on_its_own_pod(
    cluster: Cluster, first_apply: dict[str, str]
) -> None:
    for pod in cluster.deployment.pods:
        info = _settled_info(cluster, territory_stream_name(pod), 1)
        assert info["config"]["num_replicas"] == 1
        assert info["config"]["placement"]["tags"] == [pod.territory_tag]
        assert info["cluster"]["leader"] == pod.service("nats"), info["cluster"]
        assert not info["cluster"].get("replicas"), info["cluster"]


@pytest.mark.timeout(120)
def test_global_message_from_dk_reaches_se_and_is_stored(
    cluster: Cluster, first_apply: dict[str, str]
) -> None:
    payload = f"hello-{uuid.uuid4().hex}"
    subscriber = cluster.lab.spawn(
        "se", [sys.executable, "-c", SUBSCRIBE_SCRIPT, "global.test", "20"],
        name="subscriber", env=cluster.client_env("se"),
    )  # fmt: skip
    subscriber.wait_for_output("ready", timeout=15)
    # The interest travels se -> dk over the route; publishing earlier could miss it.
    wait_until(lambda: _route_interest(cluster, "dk", "se", "global.test"), timeout=10,
               what="dk learns of se's subscription to global.test")  # fmt: skip

    ack = cluster.request("dk", "global.test", payload)  # JetStream answers with a PubAck

    assert subscriber.popen.wait(20) == 0, subscriber.output()
    received = json.loads(subscriber.output().splitlines()[-1])
    assert received == {"subject": "global.test", "data": payload}
    assert ack.get("stream") == GLOBAL_STREAM, ack
    stored = cluster.request("no", f"$JS.API.STREAM.MSG.GET.{GLOBAL_STREAM}", {"seq": ack["seq"]})
    message = stored["message"]
    assert message["subject"] == "global.test"
    assert base64.b64decode(message["data"]).decode() == payload


def _route_interest(cluster: Cluster, code: str, remote: str, subject: str) -> bool:
    remote_id = cluster.monitor(remote, "varz")["server_id"]
    for route in cluster.monitor(code, "routez?subs=1").get("routes") or []:
        if route["remote_id"] == remote_id and subject in (route.get("subscriptions_list") or []):
            return True
    return False


@pytest.mark.timeout(60)
def test_wrong_client_password_is_rejected(cluster: Cluster) -> None:
    right = cluster.python("no", CONNECT_SCRIPT, env=cluster.client_env("dk"))
    wrong = cluster.python("no", CONNECT_SCRIPT, env=cluster.client_env("dk", "not-the-password"))
    assert right.strip() == "connected"
    assert wrong.startswith("rejected") and "Authorization Violation" in wrong, wrong


@pytest.mark.timeout(60)
def test_server_with_wrong_route_password_cannot_join(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Routes are authenticated too: a server rendered with another route password stays out.

    It runs on dk's host beside the real server, so it gets its own name and ports; its
    routes (to no and se) are the renderer's, with the wrong password in them.
    """
    pod = cluster.pod("dk")
    directory = tmp_path_factory.mktemp("nats-rogue")
    config = nats_config(
        cluster.deployment, pod, route_password="not-the-route-password",
        client_password=CLIENT_PASSWORD, system_password=SYSTEM_PASSWORD,
        store_dir=str(directory / "jetstream"),
    )  # fmt: skip
    config |= {"server_name": "rogue", "port": 4299, "http_port": 8299,
               "client_advertise": f"{pod.nats_host}:4299"}  # fmt: skip
    config["cluster"] |= {"port": 6299, "advertise": f"{pod.nats_host}:6299"}
    path = directory / "nats.json"
    path.write_text(json.dumps(config, indent=2))
    rogue = cluster.lab.spawn("dk", ["nats-server", "-c", str(path)], name="rogue")
    try:
        rogue.wait_for_output("Authorization Violation", timeout=15)
        routez = cluster.lab.run("dk", ["curl", "-sf", f"http://{pod.nats_host}:8299/routez"])
        assert json.loads(routez.stdout)["num_routes"] == 0, rogue.output()
    finally:
        rogue.stop()
    ids = {code: cluster.monitor(code, "varz")["server_id"] for code in cluster.servers}
    for code in cluster.servers:
        # Routed peers by server ID (2.10 pools several connections per peer).
        assert _route_ids(cluster, code) == {ids[o] for o in ids if o != code}, code


@pytest.mark.timeout(120)
def test_stream_job_waits_for_a_new_pods_server_and_reports_as_it_goes(
    cluster: Cluster, first_apply: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A pod is added: the job starts a moment before the new pod's server has joined.

    Until it joins, the server answers TERRITORY_FI with "no suitable peers for placement"
    (400, err_code 10005); the job must wait for it, not give up. And each stream's result
    is printed as soon as it has one. Last in this module: the new server stays in the
    cluster.
    """
    grown = with_spare(cluster.deployment)
    streams = stream_configs(grown)
    env = {**cluster.client_env("dk"), "STREAMS_JSON": json.dumps(streams),
           "STREAMS_DEADLINE_SECONDS": "60"}  # fmt: skip
    job = cluster.lab.spawn("dk", job_argv(), name="stream-job", env=env)
    # Before the new server exists, the streams already there are reported done.
    wait_until(lambda: '"TERRITORY_SE"' in job.output(), timeout=20,
               what=lambda: f"the job reports the existing streams\n{job.output()}")  # fmt: skip
    time.sleep(2)
    assert job.running(), f"the job gave up instead of waiting:\n{job.output()}"
    assert "TERRITORY_FI" not in job.output()

    fi = grown.pod(SPARE["code"])
    directory = tmp_path_factory.mktemp("nats-fi")
    config = nats_config(
        grown, fi, route_password=ROUTE_PASSWORD, client_password=CLIENT_PASSWORD,
        system_password=SYSTEM_PASSWORD, store_dir=str(directory / "jetstream"),
    )  # fmt: skip
    (directory / "nats.json").write_text(json.dumps(config, indent=2))
    server = cluster.lab.spawn("fi", ["nats-server", "-c", str(directory / "nats.json")],
                               name="nats")  # fmt: skip
    assert job.popen.wait(60) == 0, f"{job.output()}\n=== fi\n{server.output()}"
    results = [json.loads(line) for line in job.output().splitlines() if line.startswith("{")]
    assert results == [
        {"stream": s["name"], "action": "created" if s["name"] == "TERRITORY_FI" else "unchanged"}
        for s in streams
    ]
    info = _settled_info(cluster, "TERRITORY_FI", 1)
    assert info["cluster"]["leader"] == fi.nats_server_name


def test_the_tests_run_the_image_minor_of_nats_server() -> None:
    """What these tests prove holds for the version the stack deploys: the nats-server on
    PATH (tests/conftest.py) has the minor of the default image."""
    image_tag = Images().nats.split(":", 1)[1].split("-")[0]  # nats:2.10.24-alpine -> 2.10.24
    out = subprocess.run(["nats-server", "--version"], capture_output=True, text=True, check=True)
    version = out.stdout.strip().removeprefix("nats-server: v")
    assert version.split(".")[:2] == image_tag.split(".")[:2], (version, image_tag)


def test_one_pod_cannot_run_jetstream_which_is_why_config_needs_two(tmp_path: Path) -> None:
    """A one-pod stack would render a cluster block without routes: nats-server (the image's
    minor) then refuses JetStream. StackConfig therefore asks for two pods at least."""
    deployment = dev_deployment()
    config = nats_config(
        deployment, deployment.pods[0], route_password="r", client_password="c",
        system_password="s", store_dir=str(tmp_path / "jetstream"),
    )  # fmt: skip
    config["cluster"]["routes"] = []  # what a deployment of this one pod renders
    config |= {"port": 14222, "http_port": 18222, "client_advertise": "127.0.0.1:14222"}
    config["cluster"] |= {"port": 16222, "advertise": "127.0.0.1:16222"}
    path = tmp_path / "nats.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        ["nats-server", "-c", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0
    assert "JetStream cluster requires configured routes" in result.stdout + result.stderr
    with pytest.raises(ConfigError, match="one pod cannot form the NATS cluster"):
        load_deployment(as_pulumi_config({
            "unityplan-infra:layout": "single-host",
            "unityplan-infra:pods": [{"code": "dk", "name": "denmark", "slot": 1}],
        }))  # fmt: skip
