"""Run checks concurrently, each bounded by its probes' timeouts and all by one deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from unityplan_infra.verify.model import Check, Finding, failed


def _run_one(check: Check, sink: list[Finding]) -> None:
    started = time.monotonic()
    try:
        findings = check.probe()
    except Exception as error:  # any failure of a probe is a finding, never a crash
        findings = [failed(check.name, check.scope, _describe(error),
                           check.unreachable_cause, check.unreachable_fix)]  # fmt: skip
    elapsed = round(time.monotonic() - started, 3)
    sink.extend(
        Finding(f.check, f.scope, f.ok, f.saw, f.cause, f.fix, elapsed) for f in findings
    )


def _describe(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


def run_checks(checks: Sequence[Check], deadline_seconds: float) -> list[Finding]:
    """Every check's findings, in check order. A check still running at the deadline is
    reported as a failure (its thread is a daemon, so it cannot hold the process)."""
    sinks: list[list[Finding]] = [[] for _ in checks]
    threads = [
        threading.Thread(target=_run_one, args=(check, sink), daemon=True)
        for check, sink in zip(checks, sinks, strict=True)
    ]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline_seconds
    findings: list[Finding] = []
    for check, thread, sink in zip(checks, threads, sinks, strict=True):
        thread.join(max(0.0, end - time.monotonic()))
        if thread.is_alive():
            findings.append(failed(
                check.name, check.scope, f"no answer within {deadline_seconds:.0f} s",
                check.unreachable_cause, check.unreachable_fix,
            ))  # fmt: skip
        else:
            findings.extend(sink)
    return findings
