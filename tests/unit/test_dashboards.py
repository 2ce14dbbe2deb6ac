"""Grafana dashboards as code (render/dashboards.py): what each dashboard holds, and every
PromQL expression in them run through a real Prometheus (Debian's) and real promtool."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.support.deployments import (
    PODS,
    dev_deployment,
    multi_host_deployment,
    nordic_deployment,
)
from tests.support.tools import run_checker
from unityplan_infra.render.dashboards import (
    DASHBOARDS_DIR,
    HOME_DASHBOARD,
    HOME_DASHBOARD_PATH,
    UIDS,
    dashboards,
    expand_variables,
    home_dashboard_settings,
    panel_queries,
    render_dashboard_provider,
    render_dashboards,
)
from unityplan_infra.topology.plan import Deployment

pytestmark = pytest.mark.timeout(60)

SINGLE_HOST_FILES = {"overview.json", "postgres.json", "redis.json", "nats.json", "hosts.json"}
DEPLOYMENTS = {"dev": dev_deployment, "nordic": nordic_deployment}
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
BUILT_IN_VARIABLES = {"__rate_interval", "__interval", "__range"}
VARIABLE_REF = re.compile(r"\$\{?([A-Za-z_]\w*)\}?")
LABEL_VALUES = re.compile(r"label_values\((?P<selector>.+), (?P<label>\w+)\)")


@pytest.fixture(params=sorted(DEPLOYMENTS))
def deployment(request: pytest.FixtureRequest) -> Deployment:
    return DEPLOYMENTS[request.param]()


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row (rows included in collapsed form too)."""
    found = []
    for panel in board["panels"]:
        found.extend(panel.get("panels", []))
        if panel["type"] != "row":
            found.append(panel)
    return found


def _variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


def _panel(board: dict[str, Any], title: str) -> dict[str, Any]:
    matches = [panel for panel in _panels(board) if panel["title"] == title]
    assert len(matches) == 1, f"expected one panel {title!r} in {board['uid']}"
    return matches[0]


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel["targets"]]


# --- which dashboards, under which uids ---------------------------------------------------
def test_single_host_has_no_wireguard_dashboard() -> None:
    assert set(dashboards(dev_deployment())) == SINGLE_HOST_FILES


@pytest.mark.parametrize("deployment", [nordic_deployment(), multi_host_deployment()],
                         ids=["nordic", "multi-host-ssh"])  # fmt: skip
def test_multi_host_adds_the_wireguard_dashboard(deployment: Deployment) -> None:
    assert set(dashboards(deployment)) == SINGLE_HOST_FILES | {"wireguard.json"}


def test_uids_are_stable_unique_and_fit_grafana(deployment: Deployment) -> None:
    boards = dashboards(deployment)
    assert {name: board["uid"] for name, board in boards.items()} == {
        name: UIDS[name] for name in boards
    }
    assert len(set(UIDS.values())) == len(UIDS)
    assert all(re.fullmatch(r"[a-z0-9-]{1,40}", uid) for uid in UIDS.values())


def test_building_twice_gives_the_same_text(deployment: Deployment) -> None:
    # The SDK's builders hand out their internal objects; a fresh set per call keeps
    # one build from leaking positions or ids into the next.
    assert render_dashboards(deployment) == render_dashboards(deployment)


def test_rendered_text_is_the_sdk_model_sorted(deployment: Deployment) -> None:
    boards, texts = dashboards(deployment), render_dashboards(deployment)
    assert texts.keys() == boards.keys()
    for name, text in texts.items():
        assert json.loads(text) == boards[name]
        assert text == json.dumps(boards[name], sort_keys=True, indent=2) + "\n"


# --- what every dashboard has -------------------------------------------------------------
def test_every_dashboard_is_read_only_tagged_and_linked(deployment: Deployment) -> None:
    for board in dashboards(deployment).values():
        assert board["editable"] is False
        assert "unityplan" in board["tags"]
        assert [link["type"] for link in board["links"]] == ["dashboards"]
        assert board["links"][0]["includeVars"] is True
        assert [a["builtIn"] for a in board["annotations"]["list"]] == [1]


def test_every_panel_and_query_uses_the_prometheus_datasource(deployment: Deployment) -> None:
    for board in dashboards(deployment).values():
        for panel in _panels(board):
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel[
                "title"
            ]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "prometheus"
                assert target["expr"].strip()
        for variable in board["templating"]["list"]:
            assert variable["datasource"]["uid"] == "prometheus"


def test_every_dashboard_has_the_territory_variable(deployment: Deployment) -> None:
    for board in dashboards(deployment).values():
        territory = _variables(board)["territory"]
        # From label values: a new pod is an option as soon as Prometheus scrapes it.
        assert territory["type"] == "query"
        assert territory["query"] == 'label_values(up{job=~"postgres|redis|nats"}, territory)'
        assert territory["multi"] is True and territory["includeAll"] is True
        assert territory["current"]["value"] == "$__all"


def test_host_dashboards_have_the_host_variable(deployment: Deployment) -> None:
    for name, board in dashboards(deployment).items():
        if name in {"hosts.json", "wireguard.json"}:
            assert _variables(board)["host"]["query"] == 'label_values(up{job="node"}, host)'


def test_panel_ids_are_unique_and_the_grid_fits(deployment: Deployment) -> None:
    for board in dashboards(deployment).values():
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)) and 0 not in ids
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_variable_a_query_uses_is_defined(deployment: Deployment) -> None:
    for board in dashboards(deployment).values():
        defined = set(_variables(board)) | BUILT_IN_VARIABLES
        for expr in panel_queries(board):
            assert set(VARIABLE_REF.findall(expr)) <= defined, expr
            # Variables only ever sit in regex matchers, so "All" (a|b|c) works everywhere.
            assert not re.search(r'[^~]="\$', expr), expr


def test_pod_panels_follow_the_territory_variable(deployment: Deployment) -> None:
    for name in ("postgres.json", "redis.json", "nats.json"):
        board = dashboards(deployment)[name]
        job = name.removesuffix(".json")
        for panel in _panels(board):
            for expr in _exprs(panel):
                if f'job="{job}", territory' in expr:
                    assert 'territory=~"$territory"' in expr


# --- the overview -------------------------------------------------------------------------
def test_overview_is_the_home_dashboard() -> None:
    assert HOME_DASHBOARD == "overview.json"
    assert HOME_DASHBOARD_PATH.startswith(DASHBOARDS_DIR)
    assert home_dashboard_settings() == [
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH="
        "/etc/grafana/provisioning/dashboards/json/overview.json"
    ]


def test_overview_shows_every_pods_services_up_or_down(deployment: Deployment) -> None:
    board = dashboards(deployment)["overview.json"]
    (up,) = _exprs(_panel(board, "Pod services up (scrape)"))
    assert up == (
        'max by (job, pod, territory) (up{job=~"postgres|redis|nats", territory=~"$territory"})'
    )
    answering = " ".join(_exprs(_panel(board, "Services answering their exporter")))
    assert "pg_up" in answering and "redis_up" in answering
    assert "jetstream_server_jetstream_disabled" in answering
    (containers,) = _exprs(_panel(board, "Service containers running (cAdvisor)"))
    for kind in ("postgres", "redis", "nats", "ipfs", "matrix"):
        assert f'"service", "{kind}"' in containers
    for title in ("Pod services up (scrape)", "Services answering their exporter"):
        mapping = _panel(board, title)["fieldConfig"]["defaults"]["mappings"][0]["options"]
        assert (mapping["0"]["text"], mapping["1"]["text"]) == ("DOWN", "UP")


def test_overview_shows_the_nats_cluster(deployment: Deployment) -> None:
    board = dashboards(deployment)["overview.json"]
    size = _panel(board, "NATS cluster size")
    assert _exprs(size) == [
        'count(jetstream_server_jetstream_disabled{job="nats"} == 0)',
        'max(gnatsd_varz_jetstream_meta_cluster_size{job="nats"})',
    ]
    steps = size["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1] == {"color": "green", "value": len(deployment.pods)}
    routes = _panel(board, "NATS routes per server")
    assert "gnatsd_routez_num_routes" in _exprs(routes)[0]
    # nats-server 2.10: 4 route connections per peer (pool of 3 + the system account).
    green = routes["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]
    assert green == {"color": "green", "value": 4 * (len(deployment.pods) - 1)}


def test_overview_shows_streams_replicas_lag_and_rates(deployment: Deployment) -> None:
    board = dashboards(deployment)["overview.json"]
    streams = _panel(board, "JetStream streams")
    assert streams["type"] == "table"
    exprs = _exprs(streams)
    assert exprs[0] == 'count by (stream_name) (jetstream_stream_last_seq{job="nats"})'
    assert any(e.startswith("max by (stream_name) (jetstream_stream_last_seq") for e in exprs)
    assert all(target["format"] == "table" for target in streams["targets"])
    renames = streams["transformations"][1]["options"]["renameByName"]
    assert {"Replicas", "Replica lag", "Messages"} <= set(renames.values())
    assert "GLOBAL_EVENTS R3" in streams["description"]
    assert (
        "jetstream_consumer_num_pending"
        in _exprs(_panel(board, "Consumer lag (messages pending)"))[0]
    )
    rates = _exprs(_panel(board, "NATS messages/s"))
    assert [("gnatsd_varz_in_msgs" in rates[0]), ("gnatsd_varz_out_msgs" in rates[1])] == [True] * 2
    assert all("rate(" in expr and "$__rate_interval" in expr for expr in rates)


def test_wireguard_dashboard_reads_the_exporters_metrics() -> None:
    board = dashboards(nordic_deployment())["wireguard.json"]
    exprs = " ".join(panel_queries(board))
    for metric in ("wireguard_latest_handshake_seconds", "wireguard_received_bytes_total",
                   "wireguard_sent_bytes_total"):  # fmt: skip
        assert f'{metric}{{job="wireguard", host=~"$host"}}' in exprs
    description = _panel(board, "Seconds since the latest handshake")["description"]
    assert "10.0.2.0/24 = no" in description


# --- provisioning ---------------------------------------------------------------------------
def test_dashboard_provider() -> None:
    document: Any = YAML(typ="safe", pure=True).load(render_dashboard_provider())
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "UnityPlan"
    assert provider["allowUiUpdates"] is False
    assert (
        provider["options"]["path"] == DASHBOARDS_DIR == "/etc/grafana/provisioning/dashboards/json"
    )


# --- extracting and expanding queries -------------------------------------------------------
def test_panel_queries_reads_collapsed_rows_too() -> None:
    board = {
        "panels": [
            {"type": "stat", "targets": [{"expr": "up"}, {"refId": "B"}]},
            {"type": "row", "panels": [{"type": "timeseries", "targets": [{"expr": "vector(1)"}]}]},
        ]
    }
    assert panel_queries(board) == ["up", "vector(1)"]


def test_panel_queries_finds_every_target(deployment: Deployment) -> None:
    for board in dashboards(deployment).values():
        targets = sum(len(panel["targets"]) for panel in _panels(board))
        assert len(panel_queries(board)) == targets


def test_expand_variables() -> None:
    expr = 'rate(x{territory=~"$territory", host=~"${host}"}[$__rate_interval])'
    assert expand_variables(expr) == 'rate(x{territory=~".+", host=~".+"}[1m])'
    assert expand_variables(expr, {"territory": "dk|se"}).startswith('rate(x{territory=~"dk|se"')
    # label_replace's group reference is not a Grafana variable
    assert expand_variables('label_replace(up, "a", "$1", "job", "(.+)")') == (
        'label_replace(up, "a", "$1", "job", "(.+)")'
    )


# --- every expression through real Prometheus tools ------------------------------------------
def _all_expressions() -> list[str]:
    """Panel expressions and variable selectors of every layout, expanded, deduplicated."""
    found: dict[str, None] = {}
    for make in (dev_deployment, nordic_deployment):
        for board in dashboards(make()).values():
            for expr in panel_queries(board):
                found[expand_variables(expr)] = None
            for variable in board["templating"]["list"]:
                match = LABEL_VALUES.fullmatch(variable["query"])
                assert match, variable["query"]
                found[match["selector"]] = None
    return list(found)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus on loopback, scraping nothing: enough to evaluate expressions."""
    root = tmp_path_factory.mktemp("prometheus")
    (root / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    port = _free_port()
    log = (root / "log").open("w")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={root / 'prometheus.yml'}",
         f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (root / "log").read_text()
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _query(url: str, expr: str) -> dict[str, Any]:
    body = urllib.parse.urlencode({"query": expr}).encode()
    request = urllib.request.Request(f"{url}/api/v1/query", data=body)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            result: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as error:  # 400 with the parser's message
        result = json.load(error)
    return result


def test_every_expression_runs_on_prometheus(prometheus_url: str) -> None:
    failures = {}
    for expr in _all_expressions():
        result = _query(prometheus_url, expr)
        if result["status"] != "success":
            failures[expr] = result.get("error")
    assert not failures, json.dumps(failures, indent=2)


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    # `promtool check rules` parses each rule's expression offline, no server needed.
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"unityplan:dashboard_query_{index}", "expr": expr}
                    for index, expr in enumerate(_all_expressions())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = run_checker([PROMTOOL, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout


def _series(metric: str, labels: dict[str, str], values: str = "1+0x10") -> dict[str, str]:
    matchers = ", ".join(f'{name}="{value}"' for name, value in labels.items())
    return {"series": f"{metric}{{{matchers}}}", "values": values}


def _pod_labels(code: str, job: str) -> dict[str, str]:
    return {"job": job, "pod": PODS[code], "territory": code}


def test_overview_up_down_logic_on_synthetic_series(tmp_path: Path) -> None:
    """`promtool test rules` evaluates the overview's trickier expressions over made-up
    exporter series: a service that stops answering or a container that is gone must show 0
    (DOWN), not vanish from the panel."""
    board = dashboards(dev_deployment())["overview.json"]
    pg, _, nats = (
        expand_variables(e) for e in _exprs(_panel(board, "Services answering their exporter"))
    )
    (containers,) = (
        expand_variables(e) for e in _exprs(_panel(board, "Service containers running (cAdvisor)"))
    )
    replicas, *_, lag = _exprs(_panel(board, "JetStream streams"))
    series = [
        *(_series("up", _pod_labels(code, job)) for code in ("dk", "no", "se")
          for job in ("postgres", "nats")),
        _series("pg_up", _pod_labels("dk", "postgres")),
        _series("pg_up", _pod_labels("no", "postgres"), "0+0x10"),  # se: exporter says nothing
        _series("jetstream_server_jetstream_disabled", _pod_labels("dk", "nats"), "0+0x10"),
        *(_series("container_last_seen", {"job": "cadvisor", "host": "local",
                                          "name": f"service-{kind}-dk"})
          for kind in ("postgres", "redis", "nats", "ipfs", "matrix")),
        *(_series("jetstream_stream_last_seq", {"job": "nats", "stream_name": "GLOBAL_EVENTS",
                                                "server_name": name}, f"{seq}+0x10")
          for name, seq in (("a", 10), ("b", 10), ("c", 7))),
    ]  # fmt: skip

    def expect(value: int, labels: str) -> dict[str, Any]:
        return {"labels": labels, "value": value}

    def pods(values: dict[str, int]) -> list[dict[str, Any]]:
        return [expect(v, f'{{pod="{PODS[c]}", territory="{c}"}}') for c, v in values.items()]

    containers_expected = [
        expect(1 if code == "dk" else 0, f'{{service="{kind}", territory="{code}"}}')
        for code in ("dk", "no", "se") for kind in ("postgres", "redis", "nats", "ipfs", "matrix")
    ]  # fmt: skip
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {"expr": pg, "eval_time": "5m", "exp_samples": pods({"dk": 1, "no": 0, "se": 0})},
                    {"expr": nats, "eval_time": "5m", "exp_samples": pods({"dk": 1, "no": 0, "se": 0})},
                    {"expr": containers, "eval_time": "5m", "exp_samples": containers_expected},
                    {"expr": replicas, "eval_time": "5m",
                     "exp_samples": [expect(3, '{stream_name="GLOBAL_EVENTS"}')]},
                    {"expr": lag, "eval_time": "5m",
                     "exp_samples": [expect(3, '{stream_name="GLOBAL_EVENTS"}')]},
                ],
            }
        ],
    }  # fmt: skip
    path = tmp_path / "tests.yml"
    path.write_text(json.dumps(tests))
    result = run_checker([PROMTOOL, "test", "rules", str(path)])
    assert result.returncode == 0, result.stdout
