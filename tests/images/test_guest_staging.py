"""The componentize-py builtin guests reach the image build already built: hack/images.sh stages the
ones this machine built (``python -m tars_agent.prebuild --stage-guests DIR``) and the Containerfile
puts them into its build cache under the same keys, so the prebuild runs componentize-py only for a
guest whose key differs there (every one from a plain clone, where nothing is staged). Checked by
reading the build scripts and running the staging step; the image itself is checked in
test_image_archive.py (the image's guests are these bytes).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tars_guests.apps import APPS, build_app
from tars_guests.build import build_guest
from tars_guests.testapps import ECHO_APP, SLEEP_APP

from .image_support import CONTAINERFILE, ROOT, stages

IMAGES_SH = (ROOT / "hack" / "images.sh").read_text()


def componentized_builds() -> list[Path]:
    """What this machine's cache holds for every componentize-py builtin guest (built now if missing)."""
    return [*(build_app(name) for name in APPS), build_guest(ECHO_APP), build_guest(SLEEP_APP)]


def _staging_dir() -> str:
    match = re.search(r'^GUESTS_STAGE="\$ROOT/([^"]+)"$', IMAGES_SH, re.MULTILINE)
    assert match, "hack/images.sh names no GUESTS_STAGE"
    return match[1]


def test_staging_copies_every_componentized_guest_under_its_cache_key(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tars_agent.prebuild", "--stage-guests", str(tmp_path)]
    subprocess.run(command, check=True, timeout=1800, cwd=ROOT, capture_output=True)
    built = componentized_builds()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in built)
    for path in built:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes()


def test_the_build_stage_puts_them_into_its_guest_cache_before_the_prebuild() -> None:
    _, found = stages(CONTAINERFILE.read_text())
    build = found[0]
    cache = re.search(r"TARS_CACHE_DIR=(\S+)", " ".join(build.args_of("ENV")))
    assert cache, "the build stage sets no TARS_CACHE_DIR"
    run = next(r for r in build.args_of("RUN") if "tars_agent.prebuild" in r)
    copy = f"cp {_staging_dir()}/*.wasm {cache[1]}/guests/"
    assert copy in run and run.index(copy) < run.index("tars_agent.prebuild")
    assert f"--mount=type=cache,target={cache[1]} " in run  # kept across builds, never in the image


def test_images_sh_stages_them_before_it_computes_the_image_key() -> None:
    body = IMAGES_SH[IMAGES_SH.index("\nbuild() {") :]
    assert body.index("stage_componentized_guests") < body.index("key=$(")
    assert '"$GUESTS_STAGE"/*.wasm' in IMAGES_SH[IMAGES_SH.index("native_digest() {") :]
    assert re.search(r"^\*\.wasm$", (ROOT / ".gitignore").read_text(), re.MULTILINE)  # never committed
