"""Every dashboard expression runs on a real Prometheus that scrapes real exporters.

The bed (tests/support/monitoring_bed.py, shared with the alert pipeline test) runs the
generated scrape config for pod dk against real PostgreSQL, Redis and node exporters.
Every panel's PromQL of every dev dashboard must run without error there, and the panels
that show those services must return data (NATS and cAdvisor do not install here: their
panels are checked for syntax and by `promtool test rules` in tests/unit/test_dashboards.py).
"""

from __future__ import annotations

import pytest

from tests.support.deployments import dev_deployment
from tests.support.monitoring_bed import MonitoringBed, shared_bed
from unityplan_infra.render.dashboards import dashboards, expand_variables, panel_queries

pytestmark = pytest.mark.timeout(120)

# Metric names whose panels must show data with the bed's exporters.
WITH_DATA = ("pg_up", "pg_stat_activity_count", "redis_up", "redis_memory_used_bytes",
             "node_cpu_seconds_total", "node_filesystem_avail_bytes")  # fmt: skip


@pytest.fixture
def bed(request: pytest.FixtureRequest) -> MonitoringBed:
    return shared_bed(request)


def test_every_panel_query_runs_and_the_key_panels_have_data(bed: MonitoringBed) -> None:
    bed.wait_healthy()
    ran, with_data, empty_but_expected = 0, 0, []
    for name, dashboard in dashboards(dev_deployment()).items():
        for expr in panel_queries(dashboard):
            result = bed.query(expand_variables(expr))  # raises unless status is success
            ran += 1
            if any(metric in expr for metric in WITH_DATA):
                if result:
                    with_data += 1
                else:
                    empty_but_expected.append(f"{name}: {expr}")
    assert ran > 40
    assert with_data >= len(WITH_DATA), with_data
    assert not empty_but_expected, "\n".join(empty_but_expected)
