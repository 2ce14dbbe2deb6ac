"""`python -m unityplan_infra restore --outputs FILE --pod CODE [--snapshot ID]
[--what postgres,redis,...] [--force]`: the steps of restore/plan.py, then `verify`.

Exit codes: 0 restored and healthy; 1 the restore failed or the pod is not healthy after
it; 2 usage (bad arguments or outputs); 3 refused (data present, no --force): nothing
was changed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from unityplan_infra.restore.plan import RestorePlan, RestoreUsageError, parse_kinds, plan_restore
from unityplan_infra.restore.remote import DockerOnHost
from unityplan_infra.verify.outputs import OutputsError, load_outputs

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
JOB_EXIT_REFUSED = 3  # backup/agent.py
IDLE_POLL_SECONDS = 5.0


def wait_idle(plan: RestorePlan, docker: DockerOnHost, log: Callable[[str], None],
              limit: float) -> bool:  # fmt: skip
    """True once no restore (or run) holds the pod's job lock.

    `docker exec` does not end the process in the container when the client goes (Ctrl-C,
    a dropped SSH connection): the restore may still be writing under the stopped services.
    """
    deadline = time.monotonic() + limit
    while True:
        if docker.run(plan.idle, capture=True).returncode == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        log("the restore is still running in the backup container: waiting")
        time.sleep(IDLE_POLL_SECONDS)


def execute(plan: RestorePlan, docker: DockerOnHost, log: Callable[[str], None],
            idle_limit: float = 6 * 3600.0) -> int:  # fmt: skip
    """Stop, restore, start again once the restore is over; its exit code in our terms."""
    stopped: list[str] = []
    code = EXIT_FAILED
    try:
        for container in plan.stop:
            log(f"stopping {container}")
            if docker.run(plan.stop_args(container)).returncode != 0:
                log(f"could not stop {container}: nothing was restored")
                return EXIT_FAILED
            stopped.append(container)
        log(f"restoring {', '.join(plan.kinds)} of pod {plan.pod}")
        code = docker.run(plan.restore).returncode
    finally:
        if stopped and not wait_idle(plan, docker, log, idle_limit):
            names = " ".join(reversed(stopped))
            log(f"cannot confirm the restore has ended: {names} stay stopped; when"
                f" `docker exec service-backup-{plan.pod} ... idle` says so, docker start {names}")
            stopped.clear()
        for container in reversed(stopped):
            log(f"starting {container}")
            if docker.run(["start", container]).returncode != 0:
                log(f"could not start {container}: start it by hand (docker start {container})")
    if code == JOB_EXIT_REFUSED:
        return EXIT_REFUSED
    return EXIT_OK if code == 0 else EXIT_FAILED


def restore(args: argparse.Namespace, verify: Callable[[argparse.Namespace], int]) -> int:
    def log(message: str) -> None:
        print(f"restore: {message}", file=sys.stderr, flush=True)

    try:
        outputs = load_outputs(args.outputs)
        docker = DockerOnHost.of(outputs, args.pod, args.ssh_config)
        plan = plan_restore(args.pod, parse_kinds(args.what), snapshot=args.snapshot,
                            force=args.force)  # fmt: skip
    except (OutputsError, RestoreUsageError) as error:
        log(str(error))
        return EXIT_USAGE
    result = execute(plan, docker, log, args.idle_limit)
    if result == EXIT_REFUSED:
        log("refused: the pod holds data; nothing was changed (give --force to overwrite it)")
        return result
    if result != EXIT_OK:
        return result
    log(f"verifying pod {args.pod}")
    return EXIT_OK if verify(args) == 0 else EXIT_FAILED
