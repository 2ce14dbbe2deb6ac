"""Alerts reach a person (issue 9): Prometheus loads the rules and sends to Alertmanager,
whose routing comes from stack config (dev: MailHog), with the SMTP password in a file."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.support.mocks import Graph, run_program, unwrap
from tests.support.secret_values import is_secret
from tests.support.stackfile import as_pulumi_config, stack_values, yaml12
from unityplan_infra.config.errors import ConfigError
from unityplan_infra.deployment import load_deployment

pytestmark = pytest.mark.timeout(120)

NS = "unityplan-infra"
EMAIL = {"to": ["ops@unityplan.org"], "sender": "alerts@unityplan.org",
         "smarthost": "smtp.unityplan.org:587", "username": "alerts"}  # fmt: skip


def with_alerting(stack: str, alerting: dict[str, Any], password: str | None) -> dict[str, str]:
    values = copy.deepcopy(stack_values(stack))
    values[f"{NS}:alerting"] = alerting
    if password is not None:
        values[f"{NS}:alertSmtpPassword"] = password
    return as_pulumi_config(values)


def file_written(graph: Graph, name: str) -> str:
    return str(unwrap(graph.named(name).inputs["stdin"]))


def test_dev_alerts_go_to_mailhog_through_alertmanager() -> None:
    graph = run_program(as_pulumi_config(stack_values("dev")), "dev")
    prometheus = yaml12(file_written(graph, "prometheus-config"))
    assert prometheus["rule_files"] == ["alerts.yml"]
    targets = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["monitoring-alertmanager:9093"]
    config = yaml12(file_written(graph, "alertmanager-config"))
    (email,) = [r for r in config["receivers"] if r["name"] == "email"]
    assert email["email_configs"][0]["smarthost"] == "dev-mailhog:1025"
    # Alertmanager and MailHog share the global network; Prometheus reaches Alertmanager.
    containers = graph.containers()
    networks = {n["name"] for n in containers["monitoring-alertmanager"].inputs["networksAdvanced"]}
    assert networks & {n["name"] for n in containers["dev-mailhog"].inputs["networksAdvanced"]}
    assert networks & {n["name"] for n in containers["monitoring-prometheus"].inputs["networksAdvanced"]}


def test_smtp_password_is_a_file_for_alertmanager_alone() -> None:
    graph = run_program(with_alerting("nordic", {"email": EMAIL}, "s3cret-smtp"), "nordic")
    config_text = file_written(graph, "alertmanager-config")
    assert "s3cret-smtp" not in config_text
    (email,) = [r for r in yaml12(config_text)["receivers"] if r["name"] == "email"]
    assert email["email_configs"][0]["auth_password_file"].endswith("/smtp-password")
    secret = graph.named("alertmanager-smtp-password")
    assert unwrap(secret.inputs["stdin"]) == "s3cret-smtp"  # no trailing newline
    script = unwrap(secret.inputs["create"])
    assert 'chown 65534:65534 "$tmp"' in script and 'chmod 0600 "$tmp"' in script


def test_a_username_without_its_password_deploys_nothing() -> None:
    config = with_alerting("nordic", {"email": EMAIL}, None)
    with pytest.raises(ConfigError) as raised:
        load_deployment(config)
    assert [p.key for p in raised.value.problems] == ["alertSmtpPassword"]
    graph = Graph()
    with pytest.raises(Exception, match="alertSmtpPassword"):
        run_program(config, "nordic", graph=graph)
    assert graph.resources == []


def test_credentials_in_clear_are_refused() -> None:
    email = {**EMAIL, "requireTls": False}
    with pytest.raises(ConfigError) as raised:
        load_deployment(with_alerting("nordic", {"email": email}, "pw"))
    assert raised.value.problems[0].key == "alerting.email.requireTls"


def test_without_routing_multi_host_warns_that_alerts_reach_nobody() -> None:
    deployment = load_deployment(as_pulumi_config(stack_values("nordic")))
    assert any("alerts reach nobody" in w for w in deployment.config.warnings())
    dev = load_deployment(as_pulumi_config(stack_values("dev")))
    assert not any("alerts reach nobody" in w for w in dev.config.warnings())


# --- Matrix: a room on the monitoring pod's homeserver ------------------------------------


MATRIX = {"matrix": {"operators": ["@ops:dk.unityplan.local"]}}


@pytest.mark.parametrize("stack", ["dev", "nordic"])
def test_matrix_alerts_deploy_the_relay_and_route_to_it(stack: str) -> None:
    alerting = {**MATRIX, **({} if stack == "dev" else {"email": EMAIL})}
    # In dev a password is set without an email username: it goes unused, and no file.
    graph = run_program(with_alerting(stack, alerting, "s3cret-smtp"), stack)
    config = yaml12(file_written(graph, "alertmanager-config"))
    (matrix,) = [r for r in config["receivers"] if r["name"] == "matrix"]
    assert matrix["webhook_configs"] == [
        {"url": "http://monitoring-matrix-relay:8080/alerts", "send_resolved": True}
    ]
    assert {"receiver": "matrix", "continue": True} in config["route"]["routes"]
    relay = graph.containers()["monitoring-matrix-relay"]
    inputs = unwrap(relay.inputs)
    assert "MATRIX_RELAY_ROOM=#alerts:dk.unityplan.local" in inputs["envs"]
    assert "MATRIX_RELAY_HOMESERVER=http://service-matrix-dk:8008" in inputs["envs"]
    assert inputs["user"] == "65534:65534"
    # Alertmanager's network (global) and the monitoring pod's own, where Synapse is.
    networks = {n.inputs["name"]: n.id for n in graph.of_type("docker:index/network:Network")}
    attached = {n["name"] for n in inputs["networksAdvanced"]}
    assert attached == {networks["unityplan-global-net"], networks["pod-dk-net"]}
    # The bootstrap gets the registration secret on stdin, as a secret, never in argv.
    bootstrap = graph.named("matrix-relay-bootstrap")
    spec = json.loads(str(unwrap(bootstrap.inputs["stdin"])))
    assert spec["operators"] == ["@ops:dk.unityplan.local"]
    assert spec["registration_shared_secret"] not in str(unwrap(bootstrap.inputs["create"]))
    assert is_secret(bootstrap.inputs["stdin"])
    assert bootstrap.urn in graph.ancestors(relay)
    assert graph.containers()["service-matrix-dk"].urn in graph.ancestors(bootstrap)
    secret_files = [r for r in graph.resources if r.name == "alertmanager-smtp-password"]
    assert len(secret_files) == (0 if stack == "dev" else 1)


def test_no_relay_without_matrix_alerts() -> None:
    graph = run_program(as_pulumi_config(stack_values("dev")), "dev")
    assert "monitoring-matrix-relay" not in graph.containers()
    config = yaml12(file_written(graph, "alertmanager-config"))
    assert "matrix" not in {r["name"] for r in config["receivers"]}


@pytest.mark.parametrize(("matrix", "key"), [
    ({"operators": ["ops@dk.unityplan.local"]}, "alerting.matrix.operators"),
    ({"roomAlias": "#alerts"}, "alerting.matrix.roomAlias"),
])  # fmt: skip
def test_bad_matrix_settings_name_the_key(matrix: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_deployment(with_alerting("dev", {"matrix": matrix}, None))
