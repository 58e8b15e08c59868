"""Builtin guests from a prebuilt directory (what the container image bakes in): no componentize-py,
no compiling, the same answers as a guest built on the node."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tars_agent.prebuild import MANIFEST, prebuild
from tars_agent.sandbox.base import GuestSource, Limits
from tars_agent.sandbox.probe import native_available
from tars_guests.apps import build_app
from tars_guests.build import build_guest
from tars_guests.testapps import ECHO_APP

from .conftest import SharedBackend

NAMES = ("echo", "sentiment")
REQUEST = json.dumps({"text": "The launch went wonderfully, nothing broke!"})

# Runs in a Python that cannot find componentize-py (neither on PATH nor beside the interpreter),
# with an empty writable cache: a guest or compiled file appearing there means it was built here.
CHILD = """
import json, site, sys, time
# The parent's site directories with their .pth files: a virtualenv's editable install is an import
# hook there, which PYTHONPATH alone does not run (this interpreter is the venv's base, see below).
for directory in json.loads(sys.argv[2]):
    site.addsitedir(directory)
from pathlib import Path
from tars_agent.sandbox.base import GuestSource, Limits
from tars_agent.sandbox.probe import wasmtime_backend
from tars_guests.apps import build_app
from tars_guests.build import build_guest
from tars_guests.testapps import ECHO_APP

backend = wasmtime_backend()  # the path an agent takes here: the one the prebuild compiled for
out = {}
for name, load in (("echo", lambda: build_guest(ECHO_APP)), ("sentiment", lambda: build_app("sentiment"))):
    started = time.perf_counter()
    path = load()
    guest = backend.prepare(GuestSource(component=path), lambda n, a: "{}", Limits())
    seconds = time.perf_counter() - started
    out[name] = {"path": str(path), "seconds": seconds, "answer": guest.instantiate().handle(sys.argv[1])}
print(json.dumps(out))
"""


def _answer(backend: SharedBackend, component: Path) -> str:
    return backend.prepare(GuestSource(component=component), lambda n, a: "{}", Limits()).instantiate().handle(REQUEST)


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prebuilt")
    manifest = prebuild(out, NAMES)
    assert sorted(manifest["guests"]) == sorted(NAMES)  # type: ignore[call-overload]
    return out


def test_manifest_names_files_that_exist(prebuilt: Path) -> None:
    manifest = json.loads((prebuilt / MANIFEST).read_text())
    assert manifest["wasmtimePath"] == ("native" if native_available() else "python")
    # Code for one path only: the other would never be read.
    assert len(list((prebuilt / "compiled").glob("*.cwasm"))) == len(NAMES)
    for entry in manifest["guests"].values():
        assert (prebuilt / entry["component"]).stat().st_size == entry["componentBytes"] > 0
        assert (prebuilt / entry["compiled"]).stat().st_size == entry["compiledBytes"] > 0


def test_prebuilt_guests_load_without_componentize_py(prebuilt: Path, tmp_path: Path, backend: SharedBackend) -> None:
    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    python.symlink_to(Path(sys.executable).resolve())
    cache = tmp_path / "cache"
    env = {
        "PATH": f"{python.parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TARS_CACHE_DIR": str(cache),
        "TARS_PREBUILT_DIR": str(prebuilt),
        "PYTHONPATH": os.pathsep.join(sys.path[1:]),
    }
    # Sanity of the set-up: this interpreter really has no componentize-py to run.
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import shutil, sys, pathlib; print(shutil.which('componentize-py') or "
            "pathlib.Path(sys.executable).with_name('componentize-py').exists())",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "False"

    result = subprocess.run(
        [str(python), "-c", CHILD, REQUEST, json.dumps(site.getsitepackages())],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout)

    # Nothing was built or compiled on this "node": the cache holds no component and no code.
    assert not list(cache.rglob("*.wasm")) and not list(cache.rglob("*.cwasm"))
    fresh = {"echo": build_guest(ECHO_APP), "sentiment": build_app("sentiment")}
    for name in NAMES:
        assert Path(loaded[name]["path"]).parent == prebuilt / "guests"
        # Real output of the prebuilt guest, compared with the guest built the ordinary way.
        assert loaded[name]["answer"] == _answer(backend, fresh[name])
    assert json.loads(loaded["sentiment"]["answer"])["scores"]["compound"] > 0.5
