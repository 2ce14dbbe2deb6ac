"""The internet-facing multi-host stack's promises (issue 8), on the graph the engine gets.

README, "Security model", states them: admin interfaces on loopback, only what peers need
on WireGuard, only Traefik's 80/443 on the internet (HTTPS only, Let's Encrypt), pinned
SSH host keys on every connection, protected servers, a DOCKER-USER firewall on every host
before any container, and secrets readable by their service alone.
"""

from __future__ import annotations

import copy
import ipaddress
from functools import cache
from typing import Any

import pytest

from tests.support.mocks import CONTAINER_TYPE, Graph, run_program, unwrap
from tests.support.stackfile import (
    SSH_HOST_KEY,
    as_pulumi_config,
    file_values,
    stack_values,
)
from unityplan_infra.config.errors import ConfigError
from unityplan_infra.deployment import load_deployment
from unityplan_infra.render.firewall import APPLY_SCRIPT, docker_user_rules
from unityplan_infra.render.traefik import ACME_DIR

pytestmark = pytest.mark.timeout(180)

NS = "unityplan-infra"
SERVER = "hcloud:index/server:Server"
REMOTE = "command:remote:Command"
CODES = ("dk", "no", "se")


def nordic_with(**changes: Any) -> dict[str, Any]:
    values = copy.deepcopy(stack_values("nordic"))
    for key, value in changes.items():
        values[f"{NS}:{key}"] = value
    return values


@cache
def nordic() -> Graph:
    return run_program(as_pulumi_config(nordic_with()), "nordic")


@cache
def nordic_with_ssh_host_and_dev_tools() -> Graph:
    values = nordic_with(devTools={"enabled": True})
    values[f"{NS}:pods"][2]["host"] = {
        "kind": "ssh", "address": "192.0.2.30", "hostKey": SSH_HOST_KEY,
    }  # fmt: skip
    return run_program(as_pulumi_config(values), "nordic")


def containers(graph: Graph) -> list[dict[str, Any]]:
    return [unwrap(c.inputs) for c in graph.of_type(CONTAINER_TYPE)]


# --- exposure -----------------------------------------------------------------------------


@pytest.mark.parametrize("graph", [nordic, nordic_with_ssh_host_and_dev_tools])
def test_no_admin_port_on_a_non_loopback_address(graph: Any) -> None:
    run: Graph = graph()
    admin = {
        5432: "postgres", 6379: "redis", 5001: "kubo RPC API", 8080: "gateway or UI",
        8008: "Synapse client API", 9090: "Prometheus", 3000: "Grafana", 16686: "Jaeger",
        80: "dev dashboard", 8025: "MailHog", 1025: "MailHog SMTP", 8081: "Redis Commander",
    }  # fmt: skip
    exposed = 0
    for container in containers(run):
        name = container["name"]
        for port in container.get("ports", []):
            address = ipaddress.ip_address(port["ip"])
            if name == "reverse-proxy-traefik" and port["internal"] in (80, 443):
                assert port["ip"] == "0.0.0.0"
                continue
            if not address.is_loopback:
                exposed += 1
                assert address in ipaddress.ip_network("10.0.0.0/16"), (name, port)
                nats_monitor = name.startswith("service-nats-") and port["internal"] // 10 == 822
                cadvisor = name == "monitoring-cadvisor"  # its 8080 is a scrape target
                is_admin = (port["internal"] in admin and not cadvisor) or nats_monitor
                assert not is_admin, f"{name} publishes {port['internal']} on {port['ip']}"
    assert exposed >= 8 * 3


def test_dev_tools_in_multi_host_are_opt_in_and_on_loopback() -> None:
    assert not [c for c in containers(nordic()) if c["name"].startswith("dev-")]
    tools = [c for c in containers(nordic_with_ssh_host_and_dev_tools())
             if c["name"].startswith("dev-")]  # fmt: skip
    assert {c["name"] for c in tools} == {
        "dev-dashboard", "dev-adminer", "dev-mailhog", "dev-redis-commander"
    }  # fmt: skip
    for tool in tools:
        assert {p["ip"] for p in tool["ports"]} == {"127.0.0.1"}, tool["name"]
    # Redis Commander holds the passwords of the pods it reaches: only its own host's.
    (commander,) = [t for t in tools if t["name"] == "dev-redis-commander"]
    (hosts,) = [e for e in commander["envs"] if e.startswith("REDIS_HOSTS=")]
    assert hosts.count(":6379:0:") == 1 and "service-redis-dk:6379" in hosts


# --- SSH ----------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", [nordic, nordic_with_ssh_host_and_dev_tools])
def test_every_remote_connection_pins_the_host_key(graph: Any) -> None:
    run: Graph = graph()
    keys = {code: run.exports["hosts"][code]["sshHostKey"] for code in CODES}
    assert len(set(keys.values())) == 3 and all(k.startswith("ssh-ed25519 ") for k in keys.values())
    commands = run.of_type(REMOTE)
    assert len(commands) > 30
    for command in commands:
        connection = unwrap(command.inputs["connection"])
        assert connection.get("hostKey") in keys.values(), command.name
        assert "privateKey" not in connection and "password" not in connection, command.name
    for code in CODES:
        options = unwrap(run.named(f"host-{code}-docker").inputs)["sshOpts"]
        assert f"KnownHostsCommand=/bin/echo %H {keys[code]}" in options
        assert "StrictHostKeyChecking=yes" in options


def test_an_ssh_host_uses_the_configured_key() -> None:
    run = nordic_with_ssh_host_and_dev_tools()
    assert run.exports["hosts"]["se"]["sshHostKey"] == SSH_HOST_KEY
    assert unwrap(run.named("se-ready").inputs["connection"])["hostKey"] == SSH_HOST_KEY


# --- servers ------------------------------------------------------------------------------


def test_servers_are_protected() -> None:
    servers = nordic().of_type(SERVER)
    assert len(servers) == 3
    for server in servers:
        inputs = unwrap(server.inputs)
        assert server.protect, server.name
        assert inputs["deleteProtection"] and inputs["rebuildProtection"], server.name
        assert inputs["keepDisk"], server.name
        assert "serverType" in server.ignore_changes  # resizing needs allowResize: true


def test_retiring_a_server_is_deliberate_protect_false_lifts_every_protection() -> None:
    values = nordic_with()
    values[f"{NS}:pods"][1]["host"] |= {"protect": False, "allowResize": True}
    run = run_program(as_pulumi_config(values), "nordic")
    (server,) = [s for s in run.of_type(SERVER) if s.name == "server-no"]
    inputs = unwrap(server.inputs)
    assert not server.protect
    assert not inputs["deleteProtection"] and not inputs["rebuildProtection"]
    assert "serverType" not in server.ignore_changes


# --- Traefik --------------------------------------------------------------------------------


def test_public_routers_are_https_only_with_acme() -> None:
    run = nordic()
    (traefik,) = [c for c in containers(run) if c["name"] == "reverse-proxy-traefik"]
    args = traefik["command"]
    assert "--entrypoints.web.http.redirections.entrypoint.to=websecure" in args
    assert "--certificatesresolvers.letsencrypt.acme.email=ops@unityplan.org" in args
    assert "--certificatesresolvers.letsencrypt.acme.tlschallenge=true" in args
    assert f"--certificatesresolvers.letsencrypt.acme.storage={ACME_DIR}/acme.json" in args
    (acme,) = [v for v in traefik["volumes"] if v["containerPath"] == ACME_DIR]
    (volume,) = [v for v in run.of_type("docker:index/volume:Volume")
                 if v.inputs["name"] == acme["volumeName"]]  # fmt: skip
    assert volume.retain_on_delete  # certificates and the ACME account survive destroy
    (routes,) = [c for c in run.of_type("command:remote:Command") if c.name == "traefik-dynamic"]
    dynamic = unwrap(routes.inputs["stdin"])
    assert "entryPoints:\n      - websecure\n" in dynamic and "- web\n" not in dynamic
    assert "certResolver: letsencrypt" in dynamic
    assert "ipAllowList:\n        sourceRange:\n        - 198.18.7.7/32" in dynamic
    (grafana,) = [c for c in containers(run) if c["name"] == "monitoring-grafana"]
    assert "GF_SECURITY_COOKIE_SECURE=true" in grafana["envs"]


# --- firewall -------------------------------------------------------------------------------


def test_every_host_loads_its_firewall_before_any_container() -> None:
    run = nordic()
    for code in CODES:
        firewall = run.named(f"{code}-firewall")
        assert firewall.inputs["create"] == APPLY_SCRIPT
        public = [80, 443] if code == "dk" else []
        assert firewall.inputs["stdin"] == docker_user_rules(public)
        on_host = [c for c in run.of_type(CONTAINER_TYPE)
                   if c.provider_urn == run.named(f"host-{code}-docker").urn]  # fmt: skip
        assert on_host
        for container in on_host:
            assert run.depends_on(container, firewall), container.name


# --- bad config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "key", "fix"),
    [
        ({"webDomain": None}, "webDomain", "set webDomain"),
        ({"webDomain": "grafana.example.org"}, "webDomain", "a domain you control"),
        ({"acme": None}, "acme", "acme: {email"),
        ({"publishAddress": "0.0.0.0"}, "publishAddress", "allowPublishOnAllInterfaces"),
    ],
)
def test_bad_security_config_deploys_nothing(change: dict[str, Any], key: str, fix: str) -> None:
    values = nordic_with()
    for name, value in change.items():
        if value is None:
            values.pop(f"{NS}:{name}")
        else:
            values[f"{NS}:{name}"] = value
    with pytest.raises(ConfigError) as raised:
        load_deployment(as_pulumi_config(values))
    (problem,) = raised.value.problems
    assert problem.key == key and fix in problem.fix
    graph = Graph()
    with pytest.raises(Exception, match=key):
        run_program(as_pulumi_config(values), "nordic", graph=graph)
    assert graph.resources == []


def test_an_ssh_host_without_a_host_key_deploys_nothing() -> None:
    values = nordic_with()
    values[f"{NS}:pods"][2]["host"] = {"kind": "ssh", "address": "192.0.2.30"}
    with pytest.raises(ConfigError) as raised:
        load_deployment(as_pulumi_config(values))
    assert [p.key for p in raised.value.problems] == ["pods[2].host.hostKey"]


def test_the_committed_placeholders_are_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        load_deployment(as_pulumi_config(file_values("nordic")))
    messages = str(raised.value)
    assert "RFC 5737" in messages and "hetzner.adminCidrs[0]" in messages
    assert "RFC 2606" in messages


def test_an_open_admin_list_is_warned_about() -> None:
    values = nordic_with()
    values[f"{NS}:hetzner"] = {**values[f"{NS}:hetzner"], "adminCidrs": ["0.0.0.0/0"]}
    warnings = load_deployment(as_pulumi_config(values)).config.warnings()
    assert any("hetzner.adminCidrs contains 0.0.0.0/0" in w for w in warnings)
    assert any("webAllowCidrs contains 0.0.0.0/0" in w for w in warnings)


# --- secret files ---------------------------------------------------------------------------

SECRET_FILES = {
    "homeserver.yaml": "991:991", "signing.key": "991:991", "tls.key": "991:991",
    "nats.json": "0:0", "swarm.key": "1000:100",
}  # fmt: skip


def test_secret_files_are_readable_by_their_service_user_only() -> None:
    run = nordic()
    seen: dict[str, int] = {}
    for command in run.of_type(REMOTE):
        script = unwrap(command.inputs["create"])
        for name, owner in SECRET_FILES.items():
            if f"/{name}" in script and "/pods/" in script and "mktemp" in script:
                assert f'chown {owner} "$tmp"' in script, command.name
                assert 'chmod 0600 "$tmp"' in script, command.name
                seen[name] = seen.get(name, 0) + 1
    assert seen == {name: 3 for name in SECRET_FILES}


def test_single_host_files_stay_readable_for_containers_behind_a_closed_root() -> None:
    dev = run_program(as_pulumi_config(stack_values("dev")), "dev")
    scripts = [c.inputs["create"] for c in dev.of_type("command:local:Command")
               if "/signing.key" in c.inputs.get("create", "")]  # fmt: skip
    assert len(scripts) == 3
    for script in scripts:
        assert "chown" not in script and 'chmod 0644 "$tmp"' in script
        assert "install -d -m 0700 " in script


def test_a_server_from_before_generated_keys_pins_its_own_key() -> None:
    values = nordic_with()
    values[f"{NS}:pods"][0]["host"] = {**values[f"{NS}:pods"][0]["host"], "hostKey": SSH_HOST_KEY}
    run = run_program(as_pulumi_config(values), "nordic")
    assert run.exports["hosts"]["dk"]["sshHostKey"] == SSH_HOST_KEY
    assert unwrap(run.named("dk-firewall").inputs["connection"])["hostKey"] == SSH_HOST_KEY
    assert run.exports["hosts"]["no"]["sshHostKey"] != SSH_HOST_KEY


def test_the_stream_job_runs_behind_the_firewall_not_on_the_host_network() -> None:
    job = unwrap(nordic().named("nats-streams-apply").inputs["create"])
    assert "--network bridge " in job and "--network host" not in job
