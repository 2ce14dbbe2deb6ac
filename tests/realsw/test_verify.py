"""`verify` against real services: PostgreSQL, Redis, three nats-server, Prometheus.

The dev stack's own outputs (the program run under mocks) are the input, exactly as
`pulumi stack output --json --show-secrets` would give them; the services are started to
match them: same ports, same generated passwords, NATS from the generated configs, streams
from the program's stream job. Everything runs in one network namespace that stands in for
the single Docker host, whose hosts file resolves the NATS container names the way Docker's
network DNS does; `verify` runs in it too, as the operator's machine would on that host.

Prometheus runs a small scrape config of real exporters (Debian's postgres and redis
exporters, and itself): the generated config's targets are container names on one shared
port, checked by tests/realsw/test_promtool.py. kubo, Grafana and a second Synapse are not
part of this bed (kubo and Grafana do not install here); `--only` selects the services
that run. Tests that break something put it back; the one that stops a NATS server is last.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.mocks import Graph, run_program
from tests.support.netns import Background, NetnsLab, wait_until
from tests.support.postgres import Cluster as PgCluster
from tests.support.stackfile import stack_config
from tests.support.stream_job import job_argv
from unityplan_infra.deployment import load_deployment
from unityplan_infra.nats.streams import stream_configs
from unityplan_infra.render.nats import CLIENT_USER, nats_config
from unityplan_infra.render.postgres import postgres_init_sql
from unityplan_infra.topology.plan import Deployment
from unityplan_infra.verify.outputs import host_port

REPO = Path(__file__).resolve().parents[2]
ONLY = "postgres,redis,nats,prometheus"
HOST = "dock"  # the emulated Docker host
SCRAPE = "1s"
SYSTEM_PASSWORD = "verify-system-password"  # render/nats.py's system user; verify never uses it


@dataclass
class Platform:
    lab: NetnsLab
    deployment: Deployment
    outputs: dict[str, Any]
    workdir: Path
    nats: dict[str, Background]
    nats_configs: dict[str, Path]
    exporters: dict[str, Background]
    prometheus: Background

    def write_outputs(self, outputs: dict[str, Any], name: str) -> Path:
        path = self.workdir / name
        path.write_text(json.dumps(outputs))
        path.chmod(0o600)
        return path

    def verify(self, *args: str, outputs: dict[str, Any] | None = None, host: str = HOST,
               timeout: float = 60) -> tuple[int, str, str, float]:  # fmt: skip
        """Run `python -m unityplan_infra verify` in `host`; (exit code, stdout, stderr, s)."""
        path = self.write_outputs(outputs or self.outputs, f"outputs-{time.monotonic_ns()}.json")
        argv = [str(REPO / ".venv" / "bin" / "python"), "-m", "unityplan_infra", "verify",
                "--outputs", str(path), *args]  # fmt: skip
        started = time.monotonic()
        result = self.lab.run(host, argv, env={"PYTHONPATH": str(REPO)}, timeout=timeout,
                              check=False)  # fmt: skip
        return result.returncode, result.stdout, result.stderr, time.monotonic() - started

    def report(self, *args: str, **kwargs: Any) -> tuple[int, dict[str, Any], float]:
        code, out, err, seconds = self.verify("--json", "--only", ONLY, *args, **kwargs)
        assert code in (0, 1), err
        return code, json.loads(out), seconds

    def client_env(self, code: str) -> dict[str, str]:
        return {"NATS_URL": self.outputs["pods"][code]["endpoints"]["nats"],
                "NATS_USER": CLIENT_USER,
                "NATS_PASSWORD": self.outputs["natsClientPassword"]}  # fmt: skip

    def apply_streams(self) -> None:
        env = {**self.client_env("dk"), "STREAMS_JSON": json.dumps(stream_configs(self.deployment))}
        self.lab.run(HOST, job_argv(), env=env, timeout=150)

    def prometheus_targets(self) -> list[dict[str, Any]]:
        result = self.lab.run(HOST, ["curl", "-sf", "--max-time", "3",
                                     "http://127.0.0.1:9090/api/v1/targets"], check=False)  # fmt: skip
        if result.returncode != 0:
            return []
        targets: list[dict[str, Any]] = json.loads(result.stdout)["data"]["activeTargets"]
        return targets

    def all_targets(self, health: str) -> bool:
        targets = self.prometheus_targets()
        return len(targets) == 3 and all(t["health"] == health for t in targets)


def failures(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(f["scope"], f["check"]): f for f in report["findings"] if not f["ok"]}


def dev_outputs() -> tuple[Graph, dict[str, Any]]:
    graph = run_program(stack_config("dev"))
    return graph, copy.deepcopy(graph.exports)


def _prometheus_config(directory: Path) -> Path:
    jobs = {"prometheus": "127.0.0.1:9090", "postgres": "127.0.0.1:9187",
            "redis": "127.0.0.1:9121"}  # fmt: skip
    config = {"global": {"scrape_interval": SCRAPE, "scrape_timeout": SCRAPE},
              "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                                 for job, target in jobs.items()]}  # fmt: skip
    path = directory / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    graph, outputs = dev_outputs()
    deployment = load_deployment(stack_config("dev"))
    route_password = graph.named("nats-route-password").outputs["result"]
    workdir = tmp_path_factory.mktemp("verify")
    pg_clusters: list[PgCluster] = []
    with NetnsLab([HOST, "laptop"], workdir=workdir / "lab") as lab:
        try:
            for pod in deployment.pods:
                lab.alias(HOST, pod.nats_host)
            for pod in deployment.pods:
                exported = outputs["pods"][pod.code]
                _, pg_port = host_port(exported["endpoints"]["postgres"])
                cluster = PgCluster.create(port=pg_port)
                pg_clusters.append(cluster)
                server = lab.spawn(HOST, cluster.server_argv("127.0.0.1"), name=f"pg-{pod.code}")
                cluster.wait_ready(server.running)
                cluster.create_login("unityplan", exported["postgresPassword"])
                cluster.psql("-c", "ALTER ROLE unityplan CREATEDB")
                assert cluster.run_script(postgres_init_sql(pod, "unityplan")).returncode == 0

                _, redis_port = host_port(exported["endpoints"]["redis"])
                lab.spawn(HOST, ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                 "--requirepass", exported["redisPassword"], "--save", "",
                                 "--appendonly", "no", "--dir", str(workdir)],
                          name=f"redis-{pod.code}")  # fmt: skip

            nats: dict[str, Background] = {}
            nats_configs: dict[str, Path] = {}
            for pod in deployment.pods:
                directory = workdir / f"nats-{pod.code}"
                config = nats_config(
                    deployment, pod, route_password=route_password,
                    client_password=outputs["natsClientPassword"],
                    system_password=SYSTEM_PASSWORD, store_dir=str(directory / "jetstream"),
                )  # fmt: skip
                directory.mkdir()
                nats_configs[pod.code] = directory / "nats.json"
                nats_configs[pod.code].write_text(json.dumps(config))
                nats[pod.code] = lab.spawn(HOST, ["nats-server", "-c", str(nats_configs[pod.code])],
                                           name=f"nats-{pod.code}")  # fmt: skip

            dk = outputs["pods"]["dk"]
            exporters = {
                "postgres": lab.spawn(HOST, ["prometheus-postgres-exporter",
                                             "--web.listen-address=127.0.0.1:9187"],
                                      name="postgres-exporter",
                                      env={"DATA_SOURCE_NAME":
                                           f"postgresql://unityplan:{dk['postgresPassword']}"
                                           "@127.0.0.1:5432/unityplan_dk?sslmode=disable"}),
                "redis": lab.spawn(HOST, ["prometheus-redis-exporter",
                                          "-web.listen-address=127.0.0.1:9121",
                                          "-redis.addr=redis://127.0.0.1:6379"],
                                   name="redis-exporter",
                                   env={"REDIS_PASSWORD": dk["redisPassword"]}),
            }  # fmt: skip
            prometheus = lab.spawn(HOST, ["prometheus",
                                          f"--config.file={_prometheus_config(workdir)}",
                                          f"--storage.tsdb.path={workdir / 'tsdb'}",
                                          "--web.listen-address=127.0.0.1:9090"],
                                   name="prometheus")  # fmt: skip
            running = Platform(lab, deployment, outputs, workdir, nats, nats_configs,
                               exporters, prometheus)  # fmt: skip
            wait_until(lambda: _streams_applied(running), timeout=60, interval=1,
                       what="the stream job ran on a formed cluster")  # fmt: skip
            wait_until(lambda: running.all_targets("up"), timeout=30, interval=0.5,
                       what=lambda: f"Prometheus targets up: {running.prometheus_targets()}")
            yield running
        finally:
            lab.close()
            for cluster in pg_clusters:
                cluster.remove()


def _streams_applied(platform: Platform) -> bool:
    try:
        platform.apply_streams()
    except Exception:  # the cluster is still forming; the job's own deadline is 120 s
        return False
    return True


def _healthy(platform: Platform) -> bool:
    code, _, _ = platform.report()
    return code == 0


# --- healthy ---------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_healthy_platform_passes_every_check(platform: Platform) -> None:
    wait_until(lambda: _healthy(platform), timeout=30, interval=1,
               what=lambda: f"verify healthy: {failures(platform.report()[1])}")  # fmt: skip
    code, report, seconds = platform.report()
    assert code == 0 and report["healthy"] and report["failed"] == 0
    checks = {(f["scope"], f["check"]) for f in report["findings"]}
    for pod in ("dk", "no", "se"):
        for check in ("postgres.login", "postgres.databases", "redis.ping", "nats.server",
                      "nats.routes", "nats.jetstream", f"nats.stream.TERRITORY_{pod.upper()}"):
            assert (pod, check) in checks  # territory streams are their pod's
    assert {("mesh", "nats.stream.GLOBAL_EVENTS"), ("mesh", "prometheus.targets")} <= checks
    assert len(report["findings"]) == 3 * 7 + 2
    assert seconds < 10, seconds
    print(f"\nverify healthy: {len(report['findings'])} checks in {seconds:.2f} s")


@pytest.mark.timeout(120)
def test_table_for_people_prints_no_secret(platform: Platform) -> None:
    code, out, err, _ = platform.verify("--only", ONLY)
    assert code == 0, out + err
    assert "unityplan verify" in out and "healthy" in out
    secrets = [platform.outputs["natsClientPassword"]] + [
        pod[key] for pod in platform.outputs["pods"].values()
        for key in ("postgresPassword", "redisPassword")
    ]  # fmt: skip
    assert all(len(secret) >= 16 for secret in secrets)
    assert [s for s in secrets if s in out + err] == []


# --- broken, one thing at a time -------------------------------------------------------------
@pytest.mark.timeout(120)
def test_wrong_redis_password_is_named(platform: Platform) -> None:
    outputs = copy.deepcopy(platform.outputs)
    outputs["pods"]["no"]["redisPassword"] = "not-the-password-of-no-redis"
    code, report, _ = platform.report(outputs=outputs)
    assert code == 1
    failed = failures(report)
    assert set(failed) == {("no", "redis.ping")}
    finding = failed[("no", "redis.ping")]
    assert "authentication" in finding["saw"].lower() or "wrongpass" in finding["saw"].lower()
    assert "redisPassword" in finding["cause"]
    assert "not-the-password-of-no-redis" not in json.dumps(report)


@pytest.mark.timeout(180)
def test_missing_stream_is_named(platform: Platform) -> None:
    argv = [str(REPO / ".venv" / "bin" / "python"), "-c",
            "import asyncio, os, nats\n"
            "async def main():\n"
            "    nc = await nats.connect(os.environ['NATS_URL'], user=os.environ['NATS_USER'],"
            " password=os.environ['NATS_PASSWORD'])\n"
            "    print((await nc.request('$JS.API.STREAM.DELETE.TERRITORY_SE', b'', timeout=5)).data)\n"
            "    await nc.close()\n"
            "asyncio.run(main())\n"]  # fmt: skip
    platform.lab.run(HOST, argv, env=platform.client_env("dk"))
    try:
        code, report, _ = platform.report()
        assert code == 1
        failed = failures(report)
        assert set(failed) == {("se", "nats.stream.TERRITORY_SE")}, failed
        finding = failed[("se", "nats.stream.TERRITORY_SE")]
        assert "no reachable server holds it" in finding["saw"]
        assert "stream job" in finding["cause"]
    finally:
        platform.apply_streams()
    wait_until(lambda: _healthy(platform), timeout=30, interval=1, what="stream restored")


@pytest.mark.timeout(180)
def test_prometheus_target_down_is_named(platform: Platform) -> None:
    platform.exporters["redis"].stop()
    try:
        wait_until(lambda: any(t["health"] == "down" for t in platform.prometheus_targets()),
                   timeout=20, interval=0.5, what="Prometheus sees the redis exporter down")
        code, report, _ = platform.report()
        assert code == 1
        failed = failures(report)
        assert set(failed) == {("mesh", "prometheus.targets")}
        finding = failed[("mesh", "prometheus.targets")]
        assert "1 of 3 not up" in finding["saw"] and "redis" in finding["saw"]
        assert "127.0.0.1:9121" in finding["saw"]
        assert "exporter is down" in finding["cause"]
    finally:
        dk = platform.outputs["pods"]["dk"]
        platform.exporters["redis"] = platform.lab.spawn(
            HOST, ["prometheus-redis-exporter", "-web.listen-address=127.0.0.1:9121",
                   "-redis.addr=redis://127.0.0.1:6379"],
            name="redis-exporter-2", env={"REDIS_PASSWORD": dk["redisPassword"]},
        )  # fmt: skip
    wait_until(lambda: platform.all_targets("up"), timeout=20, interval=0.5, what="targets up")


@pytest.mark.timeout(120)
def test_ssh_forwards_reach_endpoints_only_the_host_can_reach(
    platform: Platform, tmp_path: Path
) -> None:
    """Multi-host: the operator's machine (`laptop`) is not on the network of the endpoints;
    here they are on the host's loopback, like an admin port behind SSH. verify reaches them
    through SSH forwards, to an sshd whose host key is pinned."""
    lab = platform.lab
    address = str(lab.host(HOST).address)
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("host", "operator"):
        lab.run(HOST, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)])
    (keys / "authorized_keys").write_text((keys / "operator.pub").read_text())
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    sshd_config = tmp_path / "sshd_config"
    sshd_config.write_text(
        f"ListenAddress {address}\nPort 2222\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nStrictModes no\nUsePAM no\nAllowTcpForwarding yes\n"
        "PidFile none\n"
    )
    sshd = lab.spawn(HOST, ["/usr/sbin/sshd", "-D", "-e", "-f", str(sshd_config)], name="sshd")
    try:
        host_key = " ".join((keys / "host.pub").read_text().split()[:2])
        client = tmp_path / "ssh_config"  # identity only: the host key comes from the outputs
        client.write_text(f"Host *\n  IdentityFile {keys / 'operator'}\n  IdentitiesOnly yes\n")
        outputs = copy.deepcopy(platform.outputs)
        outputs["hosts"] = {"local": {"publicAddress": address, "sshUser": "root",
                                      "sshPort": 2222, "sshHostKey": host_key}}  # fmt: skip
        direct = platform.report("--direct", outputs=outputs, host="laptop")[1]
        assert not [f for f in direct["findings"] if f["ok"]], "laptop reached the host directly"

        code, report, seconds = platform.report("--ssh-config", str(client), outputs=outputs,
                                                host="laptop")  # fmt: skip
        assert code == 0, failures(report)
        assert report["passed"] == 3 * 7 + 2
        print(f"\nverify over SSH forwards: {report['passed']} checks in {seconds:.2f} s")

        # The outputs pin another key than the server's: the forward is refused.
        outputs["hosts"]["local"]["sshHostKey"] = " ".join(
            (keys / "operator.pub").read_text().split()[:2]
        )
        code, out, err, _ = platform.verify("--only", ONLY, "--ssh-config", str(client),
                                            outputs=outputs, host="laptop")  # fmt: skip
        assert code == 2, out + err
        assert "ssh to host local failed" in err and "host key" in err.lower(), err
    finally:
        sshd.stop()


@pytest.mark.timeout(180)
def test_one_nats_server_down_is_named_with_its_consequences(platform: Platform) -> None:
    """Last: stops se's server, then brings it back from the same store."""
    platform.nats["se"].stop()
    try:
        code, report, seconds = platform.report()
        assert code == 1
        failed = failures(report)
        assert ("se", "nats.server") in failed
        assert "service-nats-se is not running" in failed[("se", "nats.server")]["cause"]
        for peer in ("dk", "no"):
            routes = failed[(peer, "nats.routes")]
            assert "service-nats-se" in routes["saw"]
            assert "route" in routes["cause"] and "mesh network" in routes["cause"]
        assert ("se", "nats.stream.TERRITORY_SE") in failed
        assert not any(scope in ("dk", "no") and check.startswith(("postgres", "redis"))
                       for scope, check in failed)  # fmt: skip
        assert seconds < 15, seconds
        print(f"\nverify with a NATS server down: {report['failed']} failures in {seconds:.2f} s")
    finally:
        platform.nats["se"] = platform.lab.spawn(
            HOST, ["nats-server", "-c", str(platform.nats_configs["se"])], name="nats-se-2"
        )
    wait_until(lambda: _healthy(platform), timeout=60, interval=1, what="se back and current")


def test_environment_has_no_proxy_that_would_hide_loopback() -> None:
    assert not {k for k in os.environ if k.lower() in ("http_proxy", "all_proxy")}
