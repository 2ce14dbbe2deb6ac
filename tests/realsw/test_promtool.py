"""The generated prometheus.yml passes the real `promtool check config`."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deployments import dev_deployment, multi_host_deployment
from tests.support.tools import run_checker
from unityplan_infra.render.alerts import ALERT_RULES_FILE, render_alert_rules
from unityplan_infra.render.prometheus import (
    prometheus_config,
    render_prometheus_config,
)
from unityplan_infra.topology.plan import Deployment

pytestmark = pytest.mark.timeout(60)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    """Run `promtool check config` on `path`; stdout and stderr merged."""
    return run_checker([PROMTOOL, "check", "config", str(path)])


@pytest.mark.parametrize(
    "deployment", [dev_deployment(), multi_host_deployment()], ids=["single-host", "multi-host"]
)
def test_generated_config_passes_promtool(tmp_path: Path, deployment: Deployment) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(render_prometheus_config(deployment))
    (tmp_path / ALERT_RULES_FILE).write_text(render_alert_rules(deployment))
    result = promtool_check(path)
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout
    # The rule file is found beside the config and checked with it.
    assert f"Checking {tmp_path / ALERT_RULES_FILE}" in result.stdout, result.stdout
    assert " rules found" in result.stdout


def test_promtool_rejects_a_duplicate_job(tmp_path: Path) -> None:
    # Negative control: the same check must fail on a broken config, or passing means nothing.
    config: dict[str, Any] = prometheus_config(dev_deployment())
    duplicate = copy.deepcopy(config["scrape_configs"][1])
    duplicate["static_configs"][0]["targets"] = ["elsewhere:9187"]
    config["scrape_configs"].append(duplicate)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp_path / ALERT_RULES_FILE).write_text(render_alert_rules(dev_deployment()))
    result = promtool_check(path)
    assert result.returncode != 0, result.stdout
    assert "SUCCESS" not in result.stdout
    assert f'found multiple scrape configs with job name "{duplicate["job_name"]}"' in (
        result.stdout
    )
