"""Builds users' JavaScript functions into components of the ``tars:guest`` ``function`` world.

A JavaScript function is one ES module that exports ``handle`` and may import ``call`` from the host::

    import { call } from "tars:guest/host@0.1.0";   // call(name, argsJson) -> string; throws when refused

    export function handle(inputJson) {             // JSON text in, JSON text out
        return JSON.stringify({ ok: true });        // a thrown error becomes the error result
    }

componentize-js (npm, the Bytecode Alliance's; SpiderMonkey compiled to WebAssembly) runs the module's
top level at build time and snapshots it into the component, like componentize-py for Python. The
component is about 12 MB, too large for a ConfigMap, so the source travels (``function.js``) and the
node builds it, cached by content under ``~/.cache/tars/guests/js/``. WASI's stdio, clocks, random and
HTTP are left out of the component: it imports only ``tars:guest/host`` and what the engine needs.

The toolchain is installed on first use (``npm ci`` from the lock file beside this module, so every
version is pinned) into ``~/.cache/tars/node/`` or ``$TARS_JS_TOOLCHAIN``; ``make guest-toolchains``
installs it ahead of time. It needs Node.js 18 or later and npm.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tars_guests.build import GuestBuildError, _build_lock, cache_dir, wit_dir
from tars_guests.buildjail import run_sandboxed

# componentize-js's `--disable` choices: everything but the engine itself (no stdio, no clocks, no
# randomness, no HTTP), so the component imports nothing the agent's linker would need to refuse.
DISABLED_FEATURES = ("stdio", "random", "clocks", "http", "fetch-event")
# Measured at 1 to 2 minutes on a busy 2-core machine; the user's top level runs in it, so bounded.
BUILD_WALL_S = 600
_LOCK_DIR = Path(__file__).resolve().parent / "js"
_CLI = Path("node_modules", "@bytecodealliance", "componentize-js", "src", "componentize.js")
# componentize-js's own CLI gives wizer an empty environment, and wizer's Wasmtime then looks for a home
# directory in /etc/passwd, which the build sandbox does not have: give it HOME (the sandbox's /tmp).
# The component's entry: the user's module beside it as user.js. The world's error is a string and
# componentize-js traps on any other thrown value, so an Error becomes its "Name: message" (or the host's
# error text, which `call` throws as an Error whose payload is that text).
_WRAPPER = """\
import { handle as userHandle } from "./user.js";

export function handle(inputJson) {
  try {
    return userHandle(inputJson);
  } catch (error) {
    if (typeof error === "string") throw error;
    if (typeof error?.payload === "string") throw error.payload;
    throw `${error?.name ?? "Error"}: ${error?.message ?? String(error)}`;
  }
}
"""
_DRIVER = """
const [entry, source, wit, out, ...disable] = process.argv.slice(1);
const { componentize } = await import(entry);
const { writeFile } = await import("node:fs/promises");
const { component } = await componentize({
  sourcePath: source, witPath: wit, worldName: "function", disableFeatures: disable, env: { HOME: "/tmp" },
});
await writeFile(out, component);
"""


class JavaScriptUnavailable(GuestBuildError):
    """This machine cannot build JavaScript functions (no Node.js or npm): a property of the agent, not
    of the function, so it is not reported as an invalid function."""


# What the agent says when it cannot build: the image ships no Node.js (see the README's functions section).
_UNAVAILABLE = (
    "this agent cannot build JavaScript functions: {missing} not found on its PATH (the tars image ships "
    "neither Node.js nor componentize-js); serve JavaScript functions from agents with Node.js 18+ and "
    "npm, or build the component yourself (python -m tars_guests.jsbuild FILE.js -o FILE.wasm) and "
    "deploy it from the nodes with source file:///path/FILE.wasm"
)


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise JavaScriptUnavailable(_UNAVAILABLE.format(missing="Node.js (node)"))
    return node


def lock_digest() -> str:
    """Names the toolchain: the lock file pins every package, so its digest is the version."""
    return hashlib.sha256((_LOCK_DIR / "package-lock.json").read_bytes()).hexdigest()[:16]


def toolchain_dir() -> Path:
    explicit = os.environ.get("TARS_JS_TOOLCHAIN")
    if explicit:
        return Path(explicit)
    root = os.environ.get("TARS_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "tars"
    return base / "node" / f"componentize-js-{lock_digest()}"


def install_toolchain(timeout_s: float = 900) -> Path:
    """componentize-js and its dependencies, as the lock file pins them (``npm ci``; once per machine)."""
    target = toolchain_dir()
    if (target / _CLI).is_file():
        return target
    node_binary()
    npm = shutil.which("npm")
    if npm is None:
        raise JavaScriptUnavailable(_UNAVAILABLE.format(missing="npm"))
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target.parent, target.name):
        if (target / _CLI).is_file():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".install-") as tmp:
            for name in ("package.json", "package-lock.json"):
                shutil.copy(_LOCK_DIR / name, Path(tmp) / name)
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=tmp,
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout_s,
            )
            if result.returncode != 0:
                raise GuestBuildError(f"npm ci of the JavaScript toolchain failed:\n{result.stderr.strip()[-2000:]}")
            os.replace(tmp, target)  # whole or not at all: a half-installed toolchain is never seen
    return target


def source_key(source: str) -> str:
    """sha256 over everything that decides the component's bytes: source, WIT, toolchain, options."""
    digest = hashlib.sha256()
    digest.update(f"componentize-js {lock_digest()} disable {','.join(DISABLED_FEATURES)}\n".encode())
    digest.update(_WRAPPER.encode())
    for path in sorted(wit_dir().glob("*.wit")):
        digest.update(path.name.encode() + b"\n" + path.read_bytes())
    digest.update(source.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _build_error_text(stderr: str) -> str:
    # componentize-js prints the user's exception (with its line) last; Node's stack frames are noise.
    lines = [line for line in stderr.strip().splitlines() if line.strip() and not line.lstrip().startswith("at ")]
    return "\n".join(lines[-12:])[-1500:]


def build_js(source: str, *, timeout_s: float = BUILD_WALL_S) -> Path:
    """The component built from a JavaScript module's ``source`` (built now, or taken from the cache).

    Raises GuestBuildError with componentize-js's message when it refuses the module (a syntax error,
    no ``handle`` export, a top level that throws), JavaScriptUnavailable when this machine has no
    Node.js or npm, and ``subprocess.TimeoutExpired`` after ``timeout_s``. The build runs in
    :mod:`tars_guests.buildjail`'s sandbox: it sees the source, the WIT files and the toolchain
    read-only and writes only its scratch directory."""
    directory = cache_dir() / "js"
    directory.mkdir(parents=True, exist_ok=True)
    key = source_key(source)
    target = directory / f"{key}.wasm"
    if target.is_file():
        return target
    node = node_binary()  # before the toolchain: one installed earlier is no use without Node.js
    toolchain = install_toolchain()
    wit = wit_dir()
    with _build_lock(directory, key):
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as tmp:
            scratch = Path(tmp)
            (scratch / "user.js").write_text(source, encoding="utf-8", errors="surrogatepass")
            (scratch / "function.js").write_text(_WRAPPER, encoding="utf-8")
            out = scratch / "function.wasm"
            entry = (toolchain / _CLI).as_uri()
            command = [node, "--input-type=module", "-e", _DRIVER, "--", entry]
            command += [str(scratch / "function.js"), str(wit), str(out), *DISABLED_FEATURES]
            result = run_sandboxed([], readable=[toolchain, wit], scratch=scratch, timeout_s=timeout_s, command=command)
            if result.returncode != 0 or not out.is_file():
                raise GuestBuildError(
                    f"componentize-js failed ({result.returncode}):\n{_build_error_text(result.stderr + result.stdout)}"
                )
            os.replace(out, target)  # atomic: readers never see a half-written component
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a JavaScript function into a tars:guest component.")
    parser.add_argument("source", type=Path, nargs="?", help="an ES module exporting handle")
    parser.add_argument("-o", "--output", type=Path, help="copy the component here")
    parser.add_argument("--install", action="store_true", help="only install the toolchain (npm ci)")
    args = parser.parse_args(argv)
    if args.install or args.source is None:
        print(install_toolchain())
        return
    built = build_js(args.source.read_text(encoding="utf-8"))
    if args.output:
        shutil.copy(built, args.output)
    print(args.output or built)


if __name__ == "__main__":
    main()
