"""The TARS guest apps (componentize-py apps of the ``tars:guest`` ``function`` world).

Each app is a directory with ``app.py``; all of them import ``tars_guestlib`` from ``_lib/``, and the
sentiment app imports vaderSentiment, whose pure-Python source and lexicon files are copied from the
installed package into a vendor directory (componentize-py bundles whole ``-p`` directories, so
pointing it at site-packages would bundle everything installed). :func:`build_app` builds (cached)
with the right Python path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

APPS_DIR = Path(__file__).resolve().parent
LIB_DIR = APPS_DIR / "_lib"

# app name -> vendored distributions (package directory name, distribution name) it needs.
APPS: dict[str, tuple[tuple[str, str], ...]] = {
    "sentiment": (("vaderSentiment", "vadersentiment"),),
    "embedding": (),
    "text_generation": (),
    "tars_reasoning": (),
    "autonomous_reasoning": (),
    "self_healing": (),
    "knowledge_query": (),
    "agent_coordination": (),
}


def app_dir(name: str) -> Path:
    if name not in APPS:
        raise KeyError(f"no guest app {name!r} (known: {', '.join(sorted(APPS))})")
    return APPS_DIR / name


def _vendor_root() -> Path:
    root = os.environ.get("TARS_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "tars") / "vendor"


def vendored_package(package: str, distribution: str) -> Path:
    """A directory holding only ``package`` (copied from the installed distribution): a -p path."""
    source = Path(str(metadata.distribution(distribution).locate_file(package))).resolve()
    if not source.is_dir():
        raise FileNotFoundError(f"{distribution} does not install a {package}/ directory")
    files = sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(source).as_posix().encode() + b"\0" + path.read_bytes())
    target = _vendor_root() / f"{package}-{digest.hexdigest()[:16]}"
    if not (target / package).is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".stage-"))
        for path in files:
            dest = staging / package / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        try:
            os.replace(staging, target)  # atomic: a concurrent builder sees all of it or none
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process won the race
    return target


def python_path(name: str) -> list[Path]:
    return [LIB_DIR, *(vendored_package(pkg, dist) for pkg, dist in APPS[app_dir(name).name])]


# The apps' sources are part of the installed package: digested once per process. Digesting them
# (and the vendored packages) took about 50 ms of every model load on a busy node, most of a cold start.
_built: dict[str, Path] = {}


def build_app(name: str) -> Path:
    """The component built from app ``name`` (built now or from the build cache)."""
    from tars_guests.build import build_guest

    built = _built.get(name)
    if built is None or not built.is_file():
        built = _built[name] = build_guest(app_dir(name), python_path=python_path(name))
    return built
