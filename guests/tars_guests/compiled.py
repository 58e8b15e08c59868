"""Compiled builtin guests: Rust crates under ``guests/compiled/`` built into ``tars:guest`` components.

Where a builtin's hot path is worth it, its guest is Rust rather than componentize-py: a fresh
instance starts in microseconds instead of a millisecond, and a call costs what the work costs.
``vader`` is VADER sentiment (vaderSentiment's lexicon and rules, ported; checked equal to the Python
package). Builds use ``guests/examples/build.sh`` (cargo, the wasm32-wasip2 target, the shared cargo
target directory outside the repository) and are cached like componentize-py builds, under a digest
of the crate's sources, the WIT files and the vaderSentiment version the lexicon comes from;
``$TARS_PREBUILT_DIR/guests/`` is looked at first.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from tars_guests.build import _build_lock, _source_files, cache_dir, prebuilt_component, wit_dir

COMPILED_DIR = Path(__file__).resolve().parent.parent / "compiled"
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "build.sh"
COMPILED = ("vader",)


def crate_dir(name: str) -> Path:
    if name not in COMPILED:
        raise KeyError(f"no compiled guest {name!r} (known: {', '.join(COMPILED)})")
    return COMPILED_DIR / name


def compiled_digest(name: str) -> str:
    digest = hashlib.sha256(f"compiled {name}\nvaderSentiment {metadata.version('vaderSentiment')}\n".encode())
    for label, root in (("crate", crate_dir(name)), ("wit", wit_dir())):
        for path in _source_files(root):
            if "target" not in path.relative_to(root).parts:
                digest.update(f"{label}:{path.relative_to(root).as_posix()}\n".encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def build_compiled(name: str) -> Path:
    """The component of compiled guest ``name`` (built now, or from the cache)."""
    key = compiled_digest(name)
    prebuilt = prebuilt_component(key)
    if prebuilt is not None:
        return prebuilt
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{key}.wasm"
    with _build_lock(cache, key):
        if not out.is_file():
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                built = subprocess.run(
                    ["bash", str(BUILD_SCRIPT), tmp, str(crate_dir(name))],
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=1800,
                    env={**os.environ, "VADER_DIR": _vader_dir()},
                )
                if built.returncode != 0:
                    raise RuntimeError(f"building compiled guest {name} failed:\n{built.stderr[-4000:]}")
                os.replace(built.stdout.strip().splitlines()[-1], out)
    return out


def _vader_dir() -> str:
    """Where the installed vaderSentiment keeps its lexicons (the crate's build.rs reads them)."""
    return str(Path(str(metadata.distribution("vadersentiment").locate_file("vaderSentiment"))).resolve())
