"""The report: a table for people (rich), JSON for machines. Secrets never appear."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from unityplan_infra.verify.model import Finding


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _clean(finding: Finding, secrets: Sequence[str]) -> Finding:
    return Finding(
        finding.check, finding.scope, finding.ok, redact(finding.saw, secrets),
        redact(finding.cause, secrets), redact(finding.fix, secrets), finding.seconds,
    )  # fmt: skip


def as_json(findings: Sequence[Finding], seconds: float, secrets: Sequence[str]) -> str:
    document: dict[str, Any] = {
        "healthy": all(f.ok for f in findings),
        "seconds": round(seconds, 3),
        "passed": sum(f.ok for f in findings),
        "failed": sum(not f.ok for f in findings),
        "findings": [asdict(_clean(f, secrets)) for f in findings],
    }
    return json.dumps(document, indent=2)


def print_table(
    findings: Sequence[Finding], seconds: float, secrets: Sequence[str], file: IO[str]
) -> None:
    console = Console(file=file, width=140, highlight=False, soft_wrap=False)
    table = Table(title="unityplan verify", show_lines=False)
    for column in ("scope", "check", "result", "saw"):
        table.add_column(column, overflow="fold")
    for finding in (_clean(f, secrets) for f in findings):
        result = Text("ok", style="green") if finding.ok else Text("FAIL", style="bold red")
        # Text, not markup: what a server said may contain brackets.
        table.add_row(Text(finding.scope), Text(finding.check), result, Text(finding.saw))
    console.print(table)
    for finding in (_clean(f, secrets) for f in findings if not f.ok):
        console.print(
            Text.assemble(("FAIL", "bold red"), f" {finding.scope} {finding.check}: {finding.saw}")
        )
        console.print(f"  likely cause: {finding.cause}", markup=False)
        console.print(f"  fix: {finding.fix}", markup=False)
    failures = sum(not f.ok for f in findings)
    verdict = "healthy" if failures == 0 else f"{failures} check(s) failed"
    console.print(f"{len(findings)} checks in {seconds:.1f} s: {verdict}", markup=False)
