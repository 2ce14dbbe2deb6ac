"""Backup metrics for node-exporter's textfile collector: `<dir>/unityplan_backup_<pod>.prom`.

Labelled like every other per-pod series of the program (render/prometheus.py): `pod` is the
pod's name, `territory` its code; the alert rules (render/alerts.py) select on both.

Written with prometheus_client (exposition format and escaping by the library), atomically:
`write_to_textfile` writes `<file>.<pid>.<thread>` beside it and renames it over the old
one, so the collector never reads half a file (and ignores the temp name: no `.prom`).

A failed run keeps the previous run's success time and sizes (read back from the file), so
`time() - unityplan_backup_last_success_timestamp_seconds` keeps growing until a run
succeeds; with no success ever it is 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "unityplan_backup_"
# Gauges carried over from the last success when a run fails.
_KEPT_ON_FAILURE = ("last_success_timestamp_seconds", "added_bytes", "processed_bytes",
                    "snapshots")  # fmt: skip
_HELP = {
    "last_success_timestamp_seconds": "Unix time the last successful backup run ended (0: never).",
    "last_run_timestamp_seconds": "Unix time the last backup run ended, successful or not.",
    "last_run_success": "1 if the last backup run succeeded, else 0.",
    "duration_seconds": "Duration of the last backup run.",
    "added_bytes": "Bytes the last successful run added to the repository (restic data_added).",
    "processed_bytes": "Bytes the last successful run read (restic total_bytes_processed).",
    "snapshots": "Snapshots of the pod in its repository after the last successful run.",
}
_POD = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class RunMetrics:
    """One run's outcome; sizes only for a successful run."""

    pod: str  # the territory code: file name and `territory` label
    finished: float  # Unix time
    duration_seconds: float
    success: bool
    added_bytes: int = 0
    processed_bytes: int = 0
    snapshots: int = 0
    pod_name: str = ""  # the `pod` label; the code when empty


def metrics_path(directory: Path, pod: str) -> Path:
    if not _POD.match(pod):
        raise ValueError(f"pod code {pod!r} is not usable in a file name")
    return directory / f"unityplan_backup_{pod}.prom"


def read_values(path: Path) -> dict[str, float]:
    """Gauge values (name without prefix) of an earlier file; {} if absent or unreadable."""
    try:
        text = path.read_text()
        families = list(text_string_to_metric_families(text))
    except (OSError, ValueError):
        return {}
    values: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            if sample.name.startswith(PREFIX):
                values[sample.name[len(PREFIX) :]] = float(sample.value)
    return values


def write_metrics(directory: Path, run: RunMetrics) -> Path:
    """Write the pod's metrics file (atomically); returns its path."""
    path = metrics_path(directory, run.pod)
    values: dict[str, float] = {
        "last_run_timestamp_seconds": run.finished,
        "last_run_success": 1.0 if run.success else 0.0,
        "duration_seconds": run.duration_seconds,
    }
    if run.success:
        values.update(last_success_timestamp_seconds=run.finished,
                      added_bytes=float(run.added_bytes),
                      processed_bytes=float(run.processed_bytes),
                      snapshots=float(run.snapshots))  # fmt: skip
    else:
        previous = read_values(path)
        for name in _KEPT_ON_FAILURE:
            values[name] = previous.get(name, 0.0)
    registry = CollectorRegistry()
    for name, help_text in _HELP.items():
        gauge = Gauge(PREFIX + name, help_text, ["pod", "territory"], registry=registry)
        gauge.labels(pod=run.pod_name or run.pod, territory=run.pod).set(values[name])
    directory.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    return path
