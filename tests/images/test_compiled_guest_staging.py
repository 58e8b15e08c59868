"""The compiled builtin guests reach the image without a Rust toolchain in it, checked by reading the
build scripts and running their staging step (no image is built here; `make images` does that).

hack/images.sh stages ``python -m tars_guests.compiled --stage DIR`` into the build context, the
Containerfile's prebuild reads that directory from ``TARS_COMPILED_GUESTS_DIR``, and the image key
changes with the staged bytes, so a new guest rebuilds the image.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tars_guests.compiled import COMPILED, STAGED_ENV, build_compiled, staged_name

from .image_support import CONTAINERFILE, ROOT, stages

IMAGES_SH = (ROOT / "hack" / "images.sh").read_text()


def _staging_dir() -> str:
    match = re.search(r'^COMPILED_STAGE="\$ROOT/([^"]+)"$', IMAGES_SH, re.MULTILINE)
    assert match, "hack/images.sh names no COMPILED_STAGE"
    return match[1]


def test_the_prebuild_reads_the_directory_images_sh_stages() -> None:
    _, found = stages(CONTAINERFILE.read_text())
    build = found[0]
    workdir = build.args_of("WORKDIR")[-1]
    prebuild = next(r for r in build.args_of("RUN") if "tars_agent.prebuild" in r)
    assert f"{STAGED_ENV}={workdir}/{_staging_dir()} " in prebuild
    # Nothing in the runtime stage builds it again.
    assert not any("tars_guests.compiled" in r for r in found[-1].args_of("RUN"))


def test_images_sh_stages_before_it_computes_the_image_key() -> None:
    body = IMAGES_SH[IMAGES_SH.index("\nbuild() {") :]
    assert body.index("stage_compiled_guests") < body.index("key=$(")
    assert '"$COMPILED_STAGE"/*.wasm' in IMAGES_SH[IMAGES_SH.index("native_digest() {") :]


def test_the_staging_step_leaves_every_compiled_guest_where_the_containerfile_looks(tmp_path: Path) -> None:
    """What images.sh runs, run here (cargo builds or the cache answers): one file per compiled guest."""
    command = [sys.executable, "-m", "tars_guests.compiled", "--stage", str(tmp_path)]
    subprocess.run(command, check=True, timeout=1800, cwd=ROOT)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(staged_name(name) for name in COMPILED)
    for name in COMPILED:
        assert (tmp_path / staged_name(name)).read_bytes() == build_compiled(name).read_bytes()
