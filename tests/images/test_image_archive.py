"""The OCI archive `make images` wrote: what a registry or a container runtime would see in it.

Marked ``images``: `make test` builds the archive first (`make images`); these tests read it with the
standard library (index.json -> manifest -> config and layers), no container tools.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tars_agent.runtimes.services import BUILTIN_GUESTS
from tars_api.tarsnode import AgentSpec
from tars_guests.apps import APPS
from tars_guests.compiled import COMPILED, staged_name

from .image_support import ROOT, OciArchive, buildah, images_script
from .test_guest_staging import componentized_builds

pytestmark = pytest.mark.images

COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "ld", "as", "make", "x86_64-linux-gnu-gcc-12")


@pytest.fixture(scope="module")
def archive() -> OciArchive:
    path = Path(images_script("archive"))
    assert path.is_file(), f"{path} is missing: run `make images` first"
    return OciArchive(path)


@pytest.fixture(scope="module")
def record(archive: OciArchive) -> dict[str, Any]:
    return json.loads(archive.path.with_name(archive.path.name.replace(".oci.tar", ".json")).read_text())


@pytest.fixture(scope="module")
def files(archive: OciArchive) -> dict[str, Any]:
    return archive.files()


def test_reference_is_the_charts_default(archive: OciArchive, record: dict[str, Any]) -> None:
    descriptor, _ = archive.manifest()
    reference = descriptor["annotations"]["org.opencontainers.image.ref.name"]
    assert reference == record["reference"] == AgentSpec().image  # the TarsNode's default agent image
    values = (ROOT / "charts/tars-operator/values.yaml").read_text()
    repository, _, tag = reference.rpartition(":")
    assert values.count(f"repository: {repository}\n") == 2  # operator and gateway
    assert f'appVersion: "{tag}"' in (ROOT / "charts/tars-operator/Chart.yaml").read_text()


def test_labels_user_and_environment(archive: OciArchive, record: dict[str, Any]) -> None:
    config = archive.config()["config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.version"] == record["reference"].rpartition(":")[2]
    assert labels["org.opencontainers.image.revision"] == record["revision"] != "unknown"
    assert config["User"] == "65532:65532"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["TARS_PREBUILT_DIR"] == "/opt/tars/prebuilt" and env["TARS_CACHE_DIR"] == "/var/cache/tars"


def test_entrypoints_are_installed(files: dict[str, Any]) -> None:
    for program in ("tars-operator", "tars-agent", "tars-gateway", "tarsctl"):
        info = files[f"/opt/tars/venv/bin/{program}"]
        assert info.isfile() and info.mode & 0o111, program


def test_no_compilers_in_the_image(files: dict[str, Any]) -> None:
    present = [f"{d}/{c}" for d in ("/usr/bin", "/usr/local/bin") for c in COMPILERS if f"{d}/{c}" in files]
    assert present == []


def test_cache_directory_belongs_to_the_runtime_user(files: dict[str, Any]) -> None:
    info = files["/var/cache/tars"]
    assert info.isdir() and (info.uid, info.gid) == (65532, 65532)


def test_every_builtin_guest_is_prebuilt(archive: OciArchive, files: dict[str, Any]) -> None:
    manifest = json.loads(archive.read("/opt/tars/prebuilt/manifest.json"))
    # Every TARS app (text_generation also serves file:// GPT-2 checkpoints), the compiled guests
    # (staged by hack/images.sh: the image has no cargo) and the echo and sleep test guests.
    compiled = {staged_name(name).removesuffix(".wasm") for name in COMPILED}
    assert set(manifest["guests"]) == set(APPS) | compiled | {"echo", "sleep"}
    assert {app for app, _inputs, _outputs in BUILTIN_GUESTS.values()} <= set(manifest["guests"])
    for entry in manifest["guests"].values():
        for kind in ("component", "compiled"):
            info = files[f"/opt/tars/prebuilt/{entry[kind]}"]
            assert info.size == entry[f"{kind}Bytes"] > 0


def test_size_and_sbom_are_recorded(archive: OciArchive, record: dict[str, Any]) -> None:
    assert record["archiveBytes"] == archive.path.stat().st_size
    assert record["imageBytes"] > record["archiveBytes"] > 10_000_000
    sbom = json.loads(Path(record["sbom"]).read_text())
    assert sbom["spdxVersion"].startswith("SPDX-")
    names = {package["name"] for package in sbom["packages"]}
    # Debian packages of the base and Python packages of the virtual environment, both.
    assert {"python3.11", "wasmtime", "kopf", "tars-k8s"} <= names


@pytest.fixture(scope="module")
def container(record: dict[str, Any]) -> Iterator[str]:
    name = buildah("from", "--pull-never", record["reference"])
    try:
        yield name
    finally:
        buildah("rm", name)


def run_in(container: str, *command: str) -> str:
    # The image's own user, environment and Python (chroot isolation: no daemon, no runtime needed).
    return buildah("run", "--isolation", "chroot", container, "--", *command)


@pytest.mark.parametrize("program", ["tars-operator", "tars-agent", "tars-gateway", "tarsctl"])
def test_programs_start_in_the_image(container: str, program: str) -> None:
    assert "usage:" in run_in(container, program, "--help")


@pytest.mark.parametrize(("builtin", "staged"), [("sentiment-vader", "vader"), ("all-minilm-l6-v2", "embedding")])
def test_the_builtin_is_the_staged_compiled_guest(container: str, builtin: str, staged: str) -> None:
    """The image has no crate and no cargo: the builtin serves the component make images staged."""
    program = (
        "from tars_agent.runtimes.services import COMPILED_BUILTINS; from tars_guests.compiled import build_compiled; "
        f"print(build_compiled(COMPILED_BUILTINS[{builtin!r}]))"
    )
    out = run_in(container, "python", "-c", program)
    assert out.splitlines()[-1] == f"/opt/tars/prebuilt/guests/compiled-{staged}.wasm"


def test_the_image_build_ran_no_componentize_py(container: str) -> None:
    """componentize-py's output differs from build to build: the image's guests are byte for byte the
    ones this machine built and make images staged (tests/images/test_guest_staging.py), so the image
    build built none of them again."""
    program = (
        "import hashlib, json, pathlib; print(json.dumps({p.name: hashlib.sha256(p.read_bytes()).hexdigest() "
        "for p in pathlib.Path('/opt/tars/prebuilt/guests').glob('*.wasm')}))"
    )
    in_image = json.loads(run_in(container, "python", "-c", program).splitlines()[-1])
    here = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in componentized_builds()}
    assert {name: in_image.get(name) for name in here} == here


def test_the_image_runs_as_its_user_and_imports_every_part(container: str) -> None:
    # Importing the agent loads numpy, tokenizers and wasmtime: shared libraries the base must carry.
    out = run_in(
        container,
        "python",
        "-c",
        "import os, tars_agent.agent, tars_operator.main, tars_gateway.server; "
        "import tokenizers, wasmtime; print(os.getuid(), os.environ['TARS_PREBUILT_DIR'])",
    )
    assert out.splitlines()[-1] == "65532 /opt/tars/prebuilt"
    # kopf names its peering identity after the user: the UID must have a passwd entry.
    assert run_in(container, "python", "-c", "import getpass; print(getpass.getuser())").splitlines()[-1] == "tars"


def test_a_users_python_function_builds_in_the_image(container: str) -> None:
    # Users' functions build on demand on the node: componentize-py must be reachable from the
    # image's virtual environment, through the build sandbox's fallback (no user namespaces in a pod).
    code = 'def handle(input):\\n    return {"words": len(input.get("text", "").split())}\\n'
    out = run_in(
        container,
        "python",
        "-c",
        "import json, os; os.environ['TARS_CACHE_DIR'] = '/tmp/cache'; "
        "from tars_agent.functions import python_function_bundle; "
        f"bundle = python_function_bundle('{code}'); print(json.dumps(str(bundle.guest.component)))",
    )
    component = json.loads(out.splitlines()[-1])
    assert component.startswith("/tmp/cache") and component.endswith(".wasm"), out
