"""Errors of the stack config: each names the key, the value it has, and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "unityplan-infra"


class ConfigIssue(ValueError):
    """A validator's finding. `key` is set when the finding is about another key than the
    one being validated (model-level checks); otherwise the validated key is used."""

    def __init__(self, problem: str, fix: str, key: str | None = None, value: object = None):
        super().__init__(f"{problem}. Fix: {fix}")
        self.problem = problem
        self.fix = fix
        self.key = key
        self.value = value


@dataclass(frozen=True)
class Problem:
    """One invalid setting."""

    key: str
    value: object
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{NAMESPACE}:{self.key} = {self.value!r}: {self.problem}. Fix: {self.fix}."


class ConfigError(Exception):
    """The stack config is invalid; nothing may be deployed."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"Invalid stack config ({len(problems)} problem(s)); nothing was deployed:\n{lines}"
        )
