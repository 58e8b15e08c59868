"""Compiled builtin guests: Rust crates under ``guests/compiled/`` built into ``tars:guest`` components.

Where a builtin's hot path is worth it, its guest is Rust rather than componentize-py: a fresh
instance starts in microseconds instead of a millisecond, and a call costs what the work costs.
``vader`` is VADER sentiment (vaderSentiment's lexicon and rules, ported; checked equal to the Python
package); ``embedding`` checks a request's texts and asks the host's ``nn.embed`` (MiniLM) for them. Both
read requests with ``guestlib``, a crate (not a guest) that does what the Python guests' tars_guestlib
does. Builds use ``guests/examples/build.sh`` (cargo, the wasm32-wasip2 target, the shared cargo
target directory outside the repository) and are cached like componentize-py builds, under a digest
of the crate's sources, the shared crate's, the WIT files and the vaderSentiment version the lexicon
comes from; ``$TARS_PREBUILT_DIR/guests/`` is looked at first.

An installed package (the container image) carries no crate and no cargo: there the component is the
one built on the build machine (``python -m tars_guests.compiled --stage DIR``, run by
hack/images.sh), found as ``compiled-<name>.wasm`` in ``$TARS_COMPILED_GUESTS_DIR`` (the image's
build stage) or in ``$TARS_PREBUILT_DIR/guests/`` (where the image's prebuild leaves it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from tars_guests.build import _build_lock, _source_files, cache_dir, prebuilt_component, prebuilt_dir, wit_dir

COMPILED_DIR = Path(__file__).resolve().parent.parent / "compiled"
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "build.sh"
COMPILED = ("vader", "embedding")
SHARED_CRATE = COMPILED_DIR / "guestlib"  # a path dependency of every guest crate
STAGED_ENV = "TARS_COMPILED_GUESTS_DIR"


def crate_dir(name: str) -> Path:
    if name not in COMPILED:
        raise KeyError(f"no compiled guest {name!r} (known: {', '.join(COMPILED)})")
    return COMPILED_DIR / name


def compiled_digest(name: str) -> str:
    digest = hashlib.sha256(f"compiled {name}\nvaderSentiment {metadata.version('vaderSentiment')}\n".encode())
    for label, root in (("crate", crate_dir(name)), ("guestlib", SHARED_CRATE), ("wit", wit_dir())):
        for path in _source_files(root):
            if "target" not in path.relative_to(root).parts:
                digest.update(f"{label}:{path.relative_to(root).as_posix()}\n".encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def staged_name(name: str) -> str:
    return f"compiled-{name}.wasm"


def built_elsewhere(name: str, crates: Path = COMPILED_DIR) -> Path | None:
    """The component staged by the build machine, when the crate is not here (an installed package)."""
    crate_dir(name)  # a known name
    if (crates / name / "Cargo.toml").is_file():
        return None
    roots = [Path(os.environ[STAGED_ENV])] if os.environ.get(STAGED_ENV) else []
    prebuilt = prebuilt_dir()
    roots += [prebuilt / "guests"] if prebuilt is not None else []
    for root in roots:
        if (root / staged_name(name)).is_file():
            return root / staged_name(name)
    raise FileNotFoundError(
        f"compiled guest {name}: its crate is not installed here and no {staged_name(name)} is in "
        f"{' or '.join(map(str, roots)) or f'${STAGED_ENV} or $TARS_PREBUILT_DIR/guests'} (hack/images.sh stages it)"
    )


# Digesting the crate costs a few milliseconds of every model load: once per process (the sources are
# part of the checkout the process runs from), as tars_guests.apps does for the apps.
_built: dict[str, Path] = {}


def build_compiled(name: str) -> Path:
    """The component of compiled guest ``name`` (built now, or from the cache)."""
    built = _built.get(name)
    if built is None or not built.is_file():
        built = _built[name] = built_elsewhere(name) or _build(name)
    return built


def _build(name: str) -> Path:
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


def stage(out: Path) -> list[Path]:
    """Every compiled guest, built (or cached) here and copied into ``out`` for an image build."""
    out.mkdir(parents=True, exist_ok=True)
    staged = []
    for name in COMPILED:
        target = out / staged_name(name)
        shutil.copyfile(build_compiled(name), target)
        staged.append(target)
    return staged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the compiled builtin guests (cargo; cached).")
    parser.add_argument("--stage", type=Path, help="also copy them into this directory as compiled-<name>.wasm")
    args = parser.parse_args(argv)
    for path in stage(args.stage) if args.stage else [build_compiled(name) for name in COMPILED]:
        print(path)


if __name__ == "__main__":
    main()
