"""Operator commands beside `pulumi up`: `python -m unityplan_infra verify ...`."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from unityplan_infra.render.backup_spec import SIGNING_KEY_KIND
from unityplan_infra.restore.command import restore
from unityplan_infra.restore.plan import DEFAULT_KINDS
from unityplan_infra.verify.checks import SERVICES, all_checks
from unityplan_infra.verify.model import Context
from unityplan_infra.verify.outputs import OutputsError, StackOutputs, load_outputs
from unityplan_infra.verify.report import as_json, print_table
from unityplan_infra.verify.runner import run_checks
from unityplan_infra.verify.tunnel import Forwards, TunnelError, ssh_forwards

EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2
# A probe waits at most `timeout` per network step and takes a few steps (connect, query;
# NATS reads three endpoints; federation asks once per peer): the whole run is bounded by
# this many probe timeouts, however many checks hang.
DEADLINE_TIMEOUTS = 4


def _services(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SERVICES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}"
        )
    return names


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m unityplan_infra")
    commands = root.add_subparsers(dest="command", required=True)
    verify = commands.add_parser(
        "verify", help="check a deployed stack end to end (exit 0 healthy, 1 not, 2 usage)"
    )
    verify.add_argument("--outputs", type=Path, required=True,
                        help="file of `pulumi stack output --json --show-secrets`")
    verify.add_argument("--json", action="store_true", help="print JSON instead of a table")
    verify.add_argument("--only", type=_services, default=list(SERVICES),
                        help=f"comma-separated services to check (default: all of {','.join(SERVICES)})")
    verify.add_argument("--skip", type=_services, default=[],
                        help="comma-separated services not to check")
    verify.add_argument("--timeout", type=float, default=5.0,
                        help="seconds per network step of a probe (default 5)")
    verify.add_argument("--ssh-config", type=Path, default=None,
                        help="multi-host: ssh config file for the forwards (ssh -F)")
    verify.add_argument("--direct", action="store_true",
                        help="multi-host: connect directly (this machine is on the VPN)")
    verify.add_argument("--pod", default=None,
                        help="check this pod only (and what the whole stack shares)")
    restore = commands.add_parser(
        "restore", help="restore a pod's data from its backups, then verify it"
                        " (exit 0 restored and healthy, 1 failed, 2 usage, 3 refused)")
    restore.add_argument("--outputs", type=Path, required=True,
                         help="file of `pulumi stack output --json --show-secrets`")
    restore.add_argument("--pod", required=True, help="territory code of the pod, e.g. dk")
    restore.add_argument("--snapshot", default="latest", help="restic snapshot ID (default: latest)")
    restore.add_argument("--what", default=None,
                         help=f"comma-separated kinds (default: {','.join(DEFAULT_KINDS)};"
                              f" also: {SIGNING_KEY_KIND})")
    restore.add_argument("--force", action="store_true", help="overwrite data that is there")
    restore.add_argument("--ssh-config", type=Path, default=None,
                         help="multi-host: ssh config file (ssh -F)")
    restore.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    restore.add_argument("--idle-limit", type=float, default=6 * 3600.0,
                         help="seconds to wait for an interrupted restore to end before"
                              " starting the stopped services (default 6 h)")
    restore.add_argument("--timeout", type=float, default=5.0, help=argparse.SUPPRESS)
    return root  # fmt: skip


@contextlib.contextmanager
def _reach(outputs: StackOutputs, args: argparse.Namespace) -> Iterator[Forwards]:
    if outputs.hosts and not args.direct:
        with ssh_forwards(outputs, args.ssh_config, timeout=max(10.0, 2 * args.timeout)) as found:
            yield found
    else:
        yield {}


def verify(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        outputs = load_outputs(args.outputs)
        services = [name for name in args.only if name not in args.skip]
        with _reach(outputs, args) as forwards:
            context = Context(outputs, args.timeout, forwards)
            checks = all_checks(context, services)
            if args.pod is not None:
                # A pod's own checks are scoped by its code; the rest are stack-wide.
                checks = [c for c in checks if c.scope == args.pod or c.scope not in outputs.pods]
            findings = run_checks(checks, DEADLINE_TIMEOUTS * args.timeout)
    except (OutputsError, TunnelError) as error:
        print(f"verify: {error}", file=sys.stderr)
        return EXIT_USAGE
    seconds = time.monotonic() - started
    secrets = outputs.secrets()
    if args.json:
        print(as_json(findings, seconds, secrets))
    else:
        print_table(findings, seconds, secrets, sys.stdout)
    return EXIT_HEALTHY if findings and all(f.ok for f in findings) else EXIT_UNHEALTHY


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "verify":
        return verify(args)
    if args.command == "restore":
        args.json, args.only, args.skip = False, list(SERVICES), []
        return restore(args, verify)
    return EXIT_USAGE  # unreachable: argparse requires a known command
