"""The GitHub Actions workflows: actionlint (with shellcheck), pinned actions, no swallowed
failures, and no drift from the commands the README documents.

actionlint comes from requirements-lint.txt (installed into the venv next to this Python),
shellcheck from Debian; both are installed by scripts/test.sh.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONLINT = Path(sys.executable).parent / "actionlint"
README = ROOT / "README.md"

# Inputs of each pinned action, from its action.yml at that very commit. actionlint checks
# inputs only for actions pinned by tag (`@v7`), not by SHA, so this table does it. A new
# pin fails test_action_inputs_exist until its inputs are copied here from its action.yml.
ACTION_INPUTS: dict[str, frozenset[str]] = {
    "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1": frozenset({  # v7.0.1
        "allow-unsafe-pr-checkout", "clean", "fetch-depth", "fetch-tags", "filter",
        "github-server-url", "lfs", "path", "persist-credentials", "ref", "repository",
        "set-safe-directory", "show-progress", "sparse-checkout", "sparse-checkout-cone-mode",
        "ssh-key", "ssh-known-hosts", "ssh-strict", "ssh-user", "submodules", "token"}),
    "actions/setup-python@5fda3b95a4ea91299a34e894583c3862153e4b97": frozenset({  # v7.0.0
        "allow-prereleases", "architecture", "cache", "cache-dependency-path", "check-latest",
        "freethreaded", "pip-version", "python-version", "python-version-file", "token",
        "update-environment"}),
    "actions/upload-artifact@bbbca2ddaa5d8feaa63e36b76fdaad77386f024f": frozenset({  # v7.0.0
        "archive", "compression-level", "if-no-files-found", "include-hidden-files", "name",
        "overwrite", "path", "retention-days"}),
    "pulumi/actions@8e5e406f4007fca908480587cb9893c07090f58d": frozenset({  # v7.0.0
        "always-include-summary", "cloud-url", "color", "command", "comment-on-pr",
        "comment-on-pr-number", "comment-on-summary", "config-map", "continue-on-error", "debug",
        "diff", "edit-pr-comment", "exclude", "exclude-dependents", "exclude-protected",
        "expect-no-changes", "github-token", "log-flow", "log-verbosity", "message", "parallel",
        "plan", "policyPackConfigs", "policyPacks", "pulumi-version", "pulumi-version-file",
        "refresh", "remove", "replace", "secrets-provider", "stack-name", "suppress-outputs",
        "suppress-progress", "target", "target-dependents", "upsert", "work-dir"}),
}  # fmt: skip

SAME_REPO = "${{ github.event.pull_request.head.repo.full_name == github.repository }}"
PUNCTUATION = {">", ">>", "<", "|", "||", "&", "&&", ";", "(", ")"}
SCRIPT = re.compile(r"^(?:\./)?scripts/([\w.-]+\.sh)$")
SWALLOWED = re.compile(r"\|\|\s*(?:true\b|exit\s+0\b|:(?!\S))|\bset\s+\+e\b|\bset\s+\+o\s+pipefail")

Invocation = tuple[str, str | None]  # (script name, first positional argument)


# --- helpers -------------------------------------------------------------------------------


def workflow_paths() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def load(name: str) -> dict[str, Any]:
    """A workflow as data. ruamel reads YAML 1.2, so the `on:` key stays the string "on"."""
    data: dict[str, Any] = YAML(typ="safe", pure=True).load((WORKFLOWS / name).read_text())
    return data


def all_workflows() -> dict[str, dict[str, Any]]:
    return {path.name: load(path.name) for path in workflow_paths()}


def steps(workflow: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, job, step


def step_named(workflow: dict[str, Any], needle: str) -> dict[str, Any]:
    found = [s for _, _, s in steps(workflow)
             if needle in str(s.get("name", "")) or needle in str(s.get("uses", ""))]  # fmt: skip
    assert len(found) == 1, f"expected one step named like {needle!r}, found {len(found)}"
    return found[0]


def unwrap(expression: Any) -> str:
    """`${{ x }}` and `x` alike, for `if:` conditions."""
    text = str(expression).strip()
    match = re.fullmatch(r"\$\{\{\s*(.*?)\s*\}\}", text)
    return match.group(1) if match else text


def script_invocations(script: str, matrix: dict[str, list[Any]] | None = None) -> list[Invocation]:
    """Every `./scripts/<name>.sh` call in a shell script, as (name, first positional arg).

    `${{ matrix.<key> }}` is expanded to each of the job's matrix values.
    """
    found: list[Invocation] = []
    for line in script.replace("\\\n", " ").splitlines():
        if "scripts/" not in line:
            continue
        keys = sorted(set(re.findall(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", line)))
        for values in itertools.product(*[(matrix or {}).get(key, [f"<matrix.{key}>"])
                                          for key in keys]):  # fmt: skip
            expanded = line
            for key, value in zip(keys, values, strict=True):
                expanded = re.sub(r"\$\{\{\s*matrix\." + key + r"\s*\}\}", str(value), expanded)
            lexer = shlex.shlex(expanded, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
            for i, token in enumerate(tokens):
                match = SCRIPT.match(token)
                if not match:
                    continue
                args = list(itertools.takewhile(lambda t: t not in PUNCTUATION, tokens[i + 1 :]))
                positional = next((a for a in args if not a.startswith("-")), None)
                found.append((match.group(1), positional))
    return found


def readme_commands() -> set[Invocation]:
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    return {call for block in blocks for call in script_invocations(block)}


def workflow_invocations(workflow: dict[str, Any]) -> list[tuple[dict[str, Any], Invocation]]:
    calls = []
    for _, job, step in steps(workflow):
        if "run" in step:
            matrix = job.get("strategy", {}).get("matrix", {})
            calls += [(step, call) for call in script_invocations(step["run"], matrix)]
    return calls


def actionlint(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ACTIONLINT.exists(), (
        f"{ACTIONLINT} is missing: .venv/bin/pip install --require-hashes -r requirements-lint.txt"
    )
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, (
        "shellcheck is missing (Debian package shellcheck; scripts/test.sh installs it)"
    )
    path = os.pathsep.join(
        [str(ACTIONLINT.parent), str(Path(shellcheck).parent), os.environ["PATH"]]
    )
    return subprocess.run(
        [str(ACTIONLINT), "-no-color", "-oneline", f"-shellcheck={shellcheck}", *args],
        cwd=cwd, env={**os.environ, "PATH": path}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


# --- actionlint ------------------------------------------------------------------------------


def test_the_three_workflows_exist() -> None:
    assert {p.name for p in workflow_paths()} >= {"ci.yml", "preview.yml", "e2e.yml"}


def test_actionlint_accepts_every_workflow() -> None:
    paths = [str(p.relative_to(ROOT)) for p in workflow_paths()]
    result = actionlint(*paths, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


BROKEN_TEMPLATE = """\
on: push
jobs:
  check:
    runs-on: ubuntu-24.04
    strategy:
      matrix:
        stack: [dev, nordic]
    steps:
      - run: {run}
        {key}: false
"""
GOOD = {"run": 'echo "$HOME" ${{ matrix.stack }}', "key": "continue-on-error"}


@pytest.mark.parametrize(
    ("defect", "problem"),
    [
        ({"key": "continue-on-eror"}, 'unexpected key "continue-on-eror"'),
        ({"run": 'echo "$HOME" ${{ matrix.stak }}'}, 'property "stak" is not defined'),
        ({"run": "echo $HOME ${{ matrix.stack }}"}, "SC2086"),  # shellcheck really runs
    ],
    ids=["unknown-key", "undefined-matrix-value", "shellcheck"],
)
def test_actionlint_rejects_a_broken_workflow(
    tmp_path: Path, defect: dict[str, str], problem: str
) -> None:
    """Negative control: the same workflow passes without the defect and fails with it."""
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    target = workflows / "check.yml"

    target.write_text(BROKEN_TEMPLATE.format(**GOOD))
    good = actionlint(str(target), cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr

    target.write_text(BROKEN_TEMPLATE.format(**{**GOOD, **defect}))
    bad = actionlint(str(target), cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert problem in bad.stdout, bad.stdout


# --- pins and inputs -------------------------------------------------------------------------


def test_every_action_is_pinned_by_commit_sha_with_its_version() -> None:
    pins: dict[str, set[str]] = {}
    for path in workflow_paths():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
            if not match or match.group(1).startswith("./"):
                continue
            where = f"{path.name}:{number}: {line.strip()}"
            action, _, ref = match.group(1).partition("@")
            assert re.fullmatch(r"[0-9a-f]{40}", ref), f"not pinned by a 40-hex SHA: {where}"
            assert re.fullmatch(r"\s*#\s*v\d+\.\d+\.\d+\s*", match.group(2)), (
                f"no `# vX.Y.Z` comment: {where}"
            )
            pins.setdefault(action, set()).add(match.group(1) + match.group(2).strip())
    assert {"actions/checkout", "actions/setup-python", "pulumi/actions"} <= set(pins)
    assert all(len(refs) == 1 for refs in pins.values()), f"one version per action: {pins}"


def test_action_inputs_exist() -> None:
    for name, workflow in all_workflows().items():
        for job_id, _, step in steps(workflow):
            uses = step.get("uses")
            if uses is None or uses.startswith("./"):
                continue
            assert uses in ACTION_INPUTS, (
                f"{name}/{job_id}: {uses} is new: add its inputs from its action.yml at that commit"
            )
            unknown = set(step.get("with", {})) - ACTION_INPUTS[uses]
            assert not unknown, f"{name}/{job_id}: {uses} has no input {sorted(unknown)}"


# --- failures are reported, never swallowed --------------------------------------------------


def test_no_step_or_job_may_fail_silently() -> None:
    for name, workflow in all_workflows().items():
        assert workflow.get("defaults", {}).get("run", {}).get("shell") == "bash", (
            f"{name}: `defaults: run: shell: bash` (-eo pipefail) is required"
        )
        for job_id, job in workflow["jobs"].items():
            assert "continue-on-error" not in job, f"{name}/{job_id}: continue-on-error"
        for job_id, _, step in steps(workflow):
            where = f"{name}/{job_id}/{step.get('name', step.get('uses'))}"
            assert "continue-on-error" not in step, f"{where}: continue-on-error"
            assert "continue-on-error" not in step.get("with", {}), f"{where}: continue-on-error"
            assert step.get("shell", "bash") == "bash", f"{where}: shell {step['shell']}"
            assert not SWALLOWED.search(step.get("run", "")), f"{where}: swallows a failure"


def test_swallowing_patterns_are_recognised() -> None:
    """The pattern above catches what it must, and not ordinary `||`."""
    for bad in [
        "./x || true",
        "./x ||true\n",
        "./x || :",
        "./x || exit 0",
        "set +e",
        "set +o pipefail",
    ]:
        assert SWALLOWED.search(bad), bad
    for fine in ["[ -n x ] || exit 1", "./x", "echo true"]:
        assert not SWALLOWED.search(fine), fine


def test_permissions_are_minimal() -> None:
    expected = {
        "ci.yml": {"contents": "read"},
        "preview.yml": {"contents": "read", "pull-requests": "write"},
        "e2e.yml": {"contents": "read"},
    }
    for name, permissions in expected.items():
        workflow = load(name)
        assert workflow["permissions"] == permissions, name
        for job_id, job in workflow["jobs"].items():
            assert "permissions" not in job, f"{name}/{job_id} widens its permissions"


# --- the workflows run the README's commands -------------------------------------------------


def test_workflows_run_only_commands_the_readme_shows() -> None:
    documented = readme_commands()
    assert {("test.sh", None), ("up.sh", "dev")} <= documented, documented
    used = [(name, call) for name, wf in all_workflows().items()
            for _, call in workflow_invocations(wf)]  # fmt: skip
    assert used, "no workflow runs ./scripts/*.sh"
    undocumented = [f"{name}: ./scripts/{script} {arg or ''}".rstrip()
                    for name, (script, arg) in used if (script, arg) not in documented]  # fmt: skip
    assert not undocumented, f"not in README's ```bash blocks: {undocumented}"


def test_invocation_parser() -> None:
    """The parser behind the drift test reads what the workflows and README write."""
    assert script_invocations("./scripts/up.sh dev        # deploy") == [("up.sh", "dev")]
    assert script_invocations("./scripts/verify.sh dev --json>verify.json") == [
        ("verify.sh", "dev")
    ]
    assert script_invocations('sudo -E env "PATH=$PATH" ./scripts/test.sh') == [("test.sh", None)]
    assert script_invocations("./scripts/destroy.sh --yes") == [("destroy.sh", None)]
    assert script_invocations("./scripts/setup.sh ${{ matrix.stack }}",
                              {"stack": ["dev", "nordic"]}) == [("setup.sh", "dev"),
                                                                ("setup.sh", "nordic")]  # fmt: skip


def test_ci_runs_the_readme_test_command_on_every_push_and_pull_request() -> None:
    workflow = load("ci.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    calls = [call for _, call in workflow_invocations(workflow)]
    assert calls == [("test.sh", None)]
    assert ("test.sh", None) in readme_commands()


def test_e2e_deploys_verifies_and_always_destroys_dev() -> None:
    workflow = load("e2e.yml")
    assert {"workflow_dispatch", "schedule"} <= set(workflow["on"])
    assert workflow["on"]["schedule"][0]["cron"].split()[2:] == ["*", "*", "*"]  # daily
    calls = workflow_invocations(workflow)
    assert [call for _, call in calls] == [("up.sh", "dev"), ("verify.sh", "dev"),
                                           ("destroy.sh", "dev")]  # fmt: skip
    (up, _), (verify, _), (destroy, _) = calls
    assert "--yes" in shlex.split(up["run"]) and "--yes" in shlex.split(destroy["run"])
    assert "if" not in up and "if" not in verify  # verify only runs on a successful deploy
    assert re.search(r"--json\s*>\s*verify\.json\s*$", verify["run"].strip()), verify["run"]

    upload = step_named(workflow, "actions/upload-artifact")
    assert upload["with"]["path"] == "verify.json"
    assert unwrap(upload["if"]) == "always()"
    assert unwrap(destroy["if"]) == "always()"
    job_steps = [s for _, _, s in steps(workflow)]
    assert job_steps.index(verify) < job_steps.index(upload) < job_steps.index(destroy)
    assert job_steps[-1] is destroy, "destroy is the last step"


# --- preview ---------------------------------------------------------------------------------


def requirement_pin(package: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith(f"{package}=="):
            return line.split("==", 1)[1].split()[0]
    raise AssertionError(f"{package} is not pinned in requirements.txt")


def test_preview_comments_on_same_repository_pull_requests_only() -> None:
    workflow = load("preview.yml")
    assert list(workflow["on"]) == ["pull_request"]
    assert workflow["concurrency"]["cancel-in-progress"] is True
    (job,) = workflow["jobs"].values()
    assert job["strategy"]["matrix"] == {"stack": ["dev", "nordic"]}

    pulumi = [s for _, _, s in steps(workflow) if s.get("uses", "").startswith("pulumi/actions@")]
    install, preview = pulumi
    assert "command" not in install["with"]
    assert preview["with"]["command"] == "preview"
    assert preview["with"]["stack-name"] == "${{ matrix.stack }}"
    assert preview["with"]["comment-on-pr"] == SAME_REPO
    for flag in ("diff", "edit-pr-comment", "comment-on-summary"):
        assert preview["with"][flag] is True, flag
    for step in pulumi:
        assert str(step["with"]["pulumi-version"]) == requirement_pin("pulumi")


def test_preview_steps_run_only_when_the_mode_step_allows() -> None:
    workflow = load("preview.yml")
    gated = [s for _, _, s in steps(workflow)
             if s.get("uses", "").startswith("pulumi/actions@") or ("run" in s and "scripts/" in s["run"])]  # fmt: skip
    assert len(gated) == 3  # install, setup.sh, preview
    for step in gated:
        assert unwrap(step.get("if")) == "steps.mode.outputs.preview == 'true'", step


def mode_step() -> dict[str, Any]:
    (step,) = [s for _, _, s in steps(load("preview.yml")) if s.get("id") == "mode"]
    return step


def read_github_env(path: Path) -> dict[str, str]:
    """$GITHUB_ENV in the runner's `NAME<<DELIMITER` form."""
    values: dict[str, str] = {}
    name, delimiter, value = "", "", list[str]()
    for line in path.read_text().splitlines():
        if not delimiter:
            name, _, delimiter = line.partition("<<")
            assert name and delimiter, f"not NAME<<DELIMITER: {line!r}"
        elif line == delimiter:
            values[name], delimiter, value = "\n".join(value), "", []
        else:
            value.append(line)
    assert not delimiter, f"{name}: no closing {delimiter}"
    return values


def run_mode(tmp_path: Path, stack: str, **secrets: str) -> tuple[subprocess.CompletedProcess[str],
                                                                    dict[str, str], str, str]:  # fmt: skip
    files = {name: tmp_path / name for name in ("env", "output", "summary")}
    for path in files.values():
        path.write_text("")
    env = {"PATH": os.environ["PATH"], "STACK": stack, "GITHUB_ENV": str(files["env"]),
           "GITHUB_OUTPUT": str(files["output"]), "GITHUB_STEP_SUMMARY": str(files["summary"])}  # fmt: skip
    for name in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "HCLOUD_TOKEN"):
        env[f"SECRET_{name}"] = secrets.get(name, "")  # an absent secret reads as ""
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", mode_step()["run"]],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return (
        result,
        read_github_env(files["env"]),
        files["output"].read_text(),
        files["summary"].read_text(),
    )


def test_mode_step_gets_the_secrets_from_the_repository() -> None:
    env = mode_step()["env"]
    assert env["STACK"] == "${{ matrix.stack }}"
    for name in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "HCLOUD_TOKEN"):
        assert env[f"SECRET_{name}"] == f"${{{{ secrets.{name} }}}}"


def test_nordic_without_hcloud_token_is_skipped_with_a_notice(tmp_path: Path) -> None:
    result, exported, output, summary = run_mode(tmp_path, "nordic")
    assert result.returncode == 0, result.stderr
    assert output.splitlines() == ["preview=false"]
    assert "::notice title=preview nordic skipped::" in result.stdout
    assert "HCLOUD_TOKEN" in summary and "forks" in summary
    assert exported == {}


def test_without_a_backend_dev_previews_a_fresh_stack_and_says_so(tmp_path: Path) -> None:
    result, exported, output, summary = run_mode(tmp_path, "dev")
    assert result.returncode == 0, result.stderr
    assert output.splitlines() == ["preview=true"]
    assert "::notice title=preview dev of a fresh stack::" in result.stdout
    assert "PULUMI_BACKEND_URL" in summary and "local file backend" in summary
    assert exported == {}  # nothing empty reaches setup.sh or Pulumi


def test_with_secrets_both_stacks_preview_the_deployed_state(tmp_path: Path) -> None:
    secrets = {"PULUMI_BACKEND_URL": "s3://state", "PULUMI_CONFIG_PASSPHRASE": "p a s s",
               "HCLOUD_TOKEN": "t" * 64}  # fmt: skip
    for stack in ("dev", "nordic"):
        result, exported, output, summary = run_mode(tmp_path, stack, **secrets)
        assert result.returncode == 0, result.stderr
        assert output.splitlines() == ["preview=true"]
        assert "::notice" not in result.stdout and summary == ""
        assert exported == secrets


def test_only_the_secrets_that_are_set_are_exported(tmp_path: Path) -> None:
    result, exported, _, _ = run_mode(tmp_path, "dev", PULUMI_BACKEND_URL="s3://state")
    assert result.returncode == 0, result.stderr
    assert exported == {"PULUMI_BACKEND_URL": "s3://state"}
