"""Builds guest apps into pre-initialised WebAssembly components of the ``tars:guest`` WIT world.

A guest app is a directory holding ``app.py`` that defines::

    import json
    import wit_world
    from wit_world.imports import host          # host.call(name, args_json) -> str, raises Err(str)
    from componentize_py_types import Err       # raise Err("text") for an error result

    class WitWorld(wit_world.WitWorld):
        def handle(self, input_json: str) -> str:
            return json.dumps(...)

componentize-py runs the module's top level at build time and snapshots the resulting memory into
the component, so whatever the top level loads (a lexicon, tables) is already in memory in every
instance. Builds take seconds; results are cached under ``~/.cache/tars/guests/`` (or
``$TARS_CACHE_DIR/guests``) keyed by a digest of the app sources, the WIT files and the
componentize-py version, so a second call is a file lookup. A read-only directory of components
built ahead of time under the same keys (``$TARS_PREBUILT_DIR/guests/``, baked into the container
image for the builtin apps) is looked at first, so a node never runs componentize-py for those.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

from tars_guests.buildjail import run_sandboxed

# Directories that never belong to a guest's sources (and would make the digest unstable).
_IGNORED_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".git"}
# A build that takes longer than this is stopped (the sandbox also caps its CPU seconds and memory).
BUILD_WALL_S = 900


class GuestBuildError(RuntimeError):
    """componentize-py refused the app; the message carries its output."""


def wit_dir() -> Path:
    """The WIT contract: shipped inside the package when installed, else the repository's guests/wit."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "wit", here.parent / "wit"):
        if (candidate / "tars.wit").is_file():
            return candidate
    raise FileNotFoundError(f"tars.wit not found beside {here}")


def cache_dir() -> Path:
    root = os.environ.get("TARS_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "tars"
    return base / "guests"


def prebuilt_dir() -> Path | None:
    """Read-only guests and compiled code made when the image was built (``TARS_PREBUILT_DIR``), if any."""
    root = os.environ.get("TARS_PREBUILT_DIR")
    return Path(root) if root else None


def prebuilt_component(key: str) -> Path | None:
    """The prebuilt component with this source digest, or None."""
    root = prebuilt_dir()
    path = root / "guests" / f"{key}.wasm" if root else None
    return path if path and path.is_file() else None


def componentize_py_version() -> str:
    return metadata.version("componentize-py")


def _source_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        skipped = _IGNORED_DIRS.intersection(path.relative_to(root).parts) or path.suffix in {".pyc", ".wasm"}
        if path.is_file() and not skipped:
            yield path


def source_digest(app_dir: Path, wit: Path, world: str, python_path: Sequence[Path] = ()) -> str:
    """sha256 over everything that decides the component's bytes."""
    digest = hashlib.sha256()
    digest.update(f"componentize-py {componentize_py_version()}\nworld {world}\n".encode())
    for label, root in [("app", app_dir), ("wit", wit)] + [(f"path{i}", p) for i, p in enumerate(python_path)]:
        for path in _source_files(root):
            digest.update(f"{label}:{path.relative_to(root).as_posix()}\n".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@contextlib.contextmanager
def _build_lock(directory: Path, key: str) -> Iterator[None]:
    # Several agents or test workers may build the same app at once; one builds, the others wait.
    with open(directory / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def componentize(
    app_dir: Path, wit: Path, world: str, out: Path, python_path: Sequence[Path], timeout_s: float = BUILD_WALL_S
) -> subprocess.CompletedProcess[str]:
    """Runs componentize-py in the build sandbox (:mod:`tars_guests.buildjail`): the app's top level
    runs at build time, so it sees its sources read-only and can write only ``out``'s directory.
    Raises ``subprocess.TimeoutExpired`` after ``timeout_s``."""
    args = ["-d", str(wit), "-w", world, "componentize", "-p", str(app_dir)]
    for extra in python_path:
        args += ["-p", str(extra)]
    args += ["app", "-o", str(out)]
    return run_sandboxed(args, readable=[app_dir, wit, *python_path], scratch=out.parent, timeout_s=timeout_s)


def build_guest(app_dir: Path, *, world: str = "function", python_path: Sequence[Path] = ()) -> Path:
    """The path of the component built from ``app_dir`` (built now, or taken from the cache).

    ``python_path`` adds directories whose modules the app imports (e.g. a pure-Python library).
    """
    app_dir = Path(app_dir).resolve()
    if not (app_dir / "app.py").is_file():
        raise GuestBuildError(f"{app_dir} has no app.py")
    wit = wit_dir()
    extra = [Path(p).resolve() for p in python_path]
    key = source_digest(app_dir, wit, world, extra)
    prebuilt = prebuilt_component(key)
    if prebuilt is not None:
        return prebuilt
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{key}.wasm"
    if target.is_file():
        return target
    with _build_lock(directory, key):
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as tmp:
            out = Path(tmp) / "guest.wasm"
            result = componentize(app_dir, wit, world, out, extra)
            if result.returncode != 0 or not out.is_file():
                raise GuestBuildError(
                    f"componentize-py failed for {app_dir} ({result.returncode}):\n{result.stderr.strip()}"
                )
            # rename is atomic: readers never see a half-written component.
            os.replace(out, target)
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a TARS guest app into a component (cached).")
    parser.add_argument("app_dir", type=Path)
    parser.add_argument("--world", default="function")
    args = parser.parse_args(argv)
    print(build_guest(args.app_dir, world=args.world))


if __name__ == "__main__":
    main()
