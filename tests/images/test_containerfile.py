"""The Containerfile's promises, checked by reading it: a runtime stage with no compilers and no root,
labels, one BASE_IMAGE for both paths, and the prebuilt guests where the agent looks for them."""

from __future__ import annotations

import fnmatch
import re
import tomllib

import pytest

from .image_support import CONTAINERFILE, ROOT, instructions, stages

TEXT = CONTAINERFILE.read_text()
PREAMBLE, STAGES = stages(TEXT)
BUILD, FINAL = STAGES[0], STAGES[-1]
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|rustc|cargo|go)\b")


def _env(stage_env: list[str]) -> dict[str, str]:
    pairs = re.findall(r"(\w+)=(\S+)", " ".join(stage_env))
    return dict(pairs)


def test_instruction_reader_joins_continuations_and_drops_comments() -> None:
    text = "# c\nARG A=1\nRUN a \\\n  && b\n\nFROM x AS y\n"
    assert instructions(text) == [("ARG", "A=1"), ("RUN", "a && b"), ("FROM", "x AS y")]


def test_one_base_image_argument_serves_both_stages() -> None:
    assert [args for ins, args in PREAMBLE if ins == "ARG"] == ["BASE_IMAGE=docker.io/library/python:3.11-slim"]
    assert len(STAGES) == 2 and BUILD.name == "build"
    assert {stage.base for stage in STAGES} == {"${BASE_IMAGE}"}


def test_final_stage_installs_and_compiles_nothing() -> None:
    # No RUN at all: the runtime stage only copies what the build stage made, so no package manager,
    # compiler or build tool can end up in it.
    assert FINAL.args_of("RUN") == []
    for copy in FINAL.args_of("COPY"):
        assert copy.startswith("--from=build "), copy
    assert not any(COMPILERS.search(args) for _, args in FINAL.instructions)


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    (user,) = FINAL.args_of("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    # The agent DaemonSet's runAsUser is the same user, so the cache directory it owns is writable.
    from tars_operator.builders import AGENT_UID

    assert int(uid) == AGENT_UID
    chowned = [c for c in FINAL.args_of("COPY") if "--chown=" in c]
    assert chowned and all(f"--chown={uid}:{gid}" in c for c in chowned)


@pytest.mark.parametrize("key", ["source", "version", "revision"])
def test_oci_labels(key: str) -> None:
    labels = " ".join(FINAL.args_of("LABEL"))
    assert re.search(rf'org\.opencontainers\.image\.{key}="\$\{{\w+\}}"', labels), labels


def test_version_label_defaults_to_the_package_and_chart_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"VERSION={version}" in FINAL.args_of("ARG")
    assert f'appVersion: "{version}"' in (ROOT / "charts/tars-operator/Chart.yaml").read_text()


def test_entry_points_of_the_image_exist() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"tars-operator", "tars-agent", "tars-gateway"} <= set(scripts)
    env = _env(FINAL.args_of("ENV"))
    assert env["PATH"].startswith("/opt/tars/venv/bin:")


def test_agent_finds_the_prebuilt_guests_the_build_stage_made() -> None:
    env = _env(FINAL.args_of("ENV"))
    prebuild = [r for r in BUILD.args_of("RUN") if "tars_agent.prebuild" in r]
    assert len(prebuild) == 1 and f"--out {env['TARS_PREBUILT_DIR']}" in prebuild[0]
    assert any(
        c.split()[-1] == "/opt/tars" and env["TARS_PREBUILT_DIR"].startswith("/opt/tars/")
        for c in FINAL.args_of("COPY")
    )
    # A read-only root: the agent writes only under its cache (an emptyDir) and HOME=/tmp.
    assert env["TARS_CACHE_DIR"] == "/var/cache/tars" and env["HOME"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def _in_context(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for a top-level path: the last matching pattern decides; ! re-includes."""
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch.fnmatch(path, pattern.lstrip("!")):
            included = negated
    return included


def test_build_context_is_the_package_sources_only() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    where = project["tool"]["setuptools"]["packages"]["find"]["where"]
    needed = [*where, "pyproject.toml", project["project"]["readme"]]
    assert [path for path in needed if not _in_context(path, patterns)] == []
    for path in ("tests", "charts", ".git", "Makefile", "bench", "e2e", "hack", ".make"):
        assert not _in_context(path, patterns), path
    assert "COPY . ./" in [f"COPY {args}" for args in BUILD.args_of("COPY")]
