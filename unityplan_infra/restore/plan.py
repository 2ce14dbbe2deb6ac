"""What a restore of one pod does, in order: pure, so it is tested without a host.

1. stop the services whose data is written under them: Redis (its data files are
   replaced while it is down) and Synapse (it holds connections to its database and
   writes its media store);
2. run the restore inside the pod's backup container, which reaches every service and
   mounts the volumes (backup/agent.py `restore`);
3. start what was stopped, also when the restore failed or refused;
4. `verify` the pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from unityplan_infra.render.backup_job import JOB_FILE
from unityplan_infra.render.backup_spec import CONFIG_DIR, SIGNING_KEY_KIND, SPEC_FILE
from unityplan_infra.topology.stop import stop_grace_seconds

KINDS = ("postgres", "redis", "jetstream", "ipfs", "matrix", SIGNING_KEY_KIND)
DEFAULT_KINDS = tuple(kind for kind in KINDS if kind != SIGNING_KEY_KIND)
# Which services must be down while a kind is restored.
STOPPED_FOR = {
    "redis": ("redis",),
    "postgres": ("matrix",),  # Synapse's database is one of the pod's
    "matrix": ("matrix",),
    SIGNING_KEY_KIND: ("matrix",),
}


class RestoreUsageError(ValueError):
    """The restore was asked for something that does not exist."""


@dataclass(frozen=True)
class RestorePlan:
    pod: str
    kinds: tuple[str, ...]
    stop: tuple[str, ...]
    """Containers to stop first (and start again afterwards, in reverse order)."""
    restore: tuple[str, ...]
    """`docker` arguments of the restore inside the backup container."""
    idle: tuple[str, ...]
    """`docker` arguments that succeed once no job of the pod holds its lock."""

    def stop_args(self, container: str) -> list[str]:
        kind = container.split("-")[1]  # service-<kind>-<code>
        return ["stop", "--time", str(stop_grace_seconds(kind)), container]


def parse_kinds(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT_KINDS
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise RestoreUsageError(
            f"unknown kind(s) {', '.join(unknown) or '(none)'}; known: {', '.join(KINDS)}"
        )
    return kinds


def plan_restore(
    pod: str, kinds: Sequence[str], *, snapshot: str = "latest", force: bool = False
) -> RestorePlan:
    services = dict.fromkeys(s for kind in kinds for s in STOPPED_FOR.get(kind, ()))
    job = ["exec", f"service-backup-{pod}", "python3", f"{CONFIG_DIR}/{JOB_FILE}"]
    spec = ["--spec", f"{CONFIG_DIR}/{SPEC_FILE}"]
    restore = [*job, "restore", *spec, "--snapshot", snapshot, "--what", ",".join(kinds),
               *(["--force"] if force else [])]  # fmt: skip
    return RestorePlan(
        pod, tuple(kinds), tuple(f"service-{s}-{pod}" for s in services), tuple(restore),
        (*job, "idle", *spec),
    )
