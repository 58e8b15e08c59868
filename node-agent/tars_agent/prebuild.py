"""Builds every builtin guest and its compiled code into a directory, for the container image.

``python -m tars_agent.prebuild --out DIR`` writes ``DIR/guests/<source digest>.wasm`` (what
``tars_guests.build.build_guest`` would build), ``DIR/compiled/<key>.cwasm`` (Wasmtime's
serialized code for the path this install's agents take, native or wasmtime-py, with its Wasmtime
version and the agent's engine settings) and
``DIR/models/<key>/`` (MiniLM's encoder optimized by onnxruntime, weights prepacked for this CPU),
plus ``manifest.json``.
An agent started with ``TARS_PREBUILT_DIR=DIR`` finds both under the keys it computes anyway, so it
loads a builtin model without componentize-py or Cranelift; anything else still builds on demand
into the writable cache.

``python -m tars_agent.prebuild --stage-guests DIR`` (run by hack/images.sh on the build machine)
copies the componentize-py guests this machine has built into the image's build context, so the
image build does not build them a second time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tars_agent.sandbox.probe import native_available
from tars_agent.sandbox.wasmtime_backend import (
    WasmtimeBackend,
    compiled_cache_dir,
    compiled_cache_key,
    prebuilt_compiled,
    wasmtime_version,
)

MANIFEST = "manifest.json"


def _componentized() -> dict[str, Callable[[], Path]]:
    """Builders of the builtin guests componentize-py makes: the TARS apps, the echo and sleep guests."""
    from tars_guests.apps import APPS, build_app
    from tars_guests.build import build_guest
    from tars_guests.testapps import ECHO_APP, SLEEP_APP

    builders: dict[str, Callable[[], Path]] = {name: functools.partial(build_app, name) for name in APPS}
    builders["echo"] = functools.partial(build_guest, ECHO_APP)
    builders["sleep"] = functools.partial(build_guest, SLEEP_APP)
    return builders


def builtin_guests(names: Sequence[str] | None = None) -> dict[str, Path]:
    """The guests builtin models run (all: the TARS apps, the compiled guests and the echo and sleep
    test guests), built or cached. Compiled guests are never built here in an image: it takes the
    ones hack/images.sh staged (tars_guests.compiled)."""
    from tars_guests.compiled import COMPILED, build_compiled

    builders = _componentized()
    builders.update({f"compiled-{name}": functools.partial(build_compiled, name) for name in COMPILED})
    if names is not None:
        builders = {name: builders[name] for name in names}
    # componentize-py is single-threaded and CPU-bound: one build per core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {name: pool.submit(build) for name, build in builders.items()}
        return {name: future.result() for name, future in futures.items()}


def stage_guests(out: Path) -> list[Path]:
    """The componentize-py guests, built here (or taken from this machine's cache) and copied into
    ``out`` under their cache names (``<source digest>.wasm``), for an image build: the Containerfile
    puts them into its build cache, where the prebuild finds each guest whose digest it computes too
    (the same sources and componentize-py) and builds only the others."""
    out.mkdir(parents=True, exist_ok=True)
    staged = []
    for built in builtin_guests(sorted(_componentized())).values():
        shutil.copyfile(built, out / built.name)
        staged.append(out / built.name)
    return staged


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def prebuild_models(models_dir: Path) -> dict[str, object]:
    """The builtin runtimes' models in the form they load fastest (MiniLM's optimized ONNX encoder)."""
    import onnxruntime

    from tars_agent.runtimes.minilm import prebuild_encoder

    return {"onnxruntime": onnxruntime.__version__, "all-minilm-l6-v2": prebuild_encoder(models_dir)}


def _compiler() -> tuple[str, Callable[[Path], object], Callable[[bytes], str], Callable[[], None]]:
    """(path, compile, cache key, close) of the Wasmtime path this install's agents take: the native
    extension where it is installed (an image that carries it), else wasmtime-py. Code for the other
    path would never be read (it is about a third of an image's compiled code); an agent forced onto
    it (TARS_WASMTIME_PATH) compiles on first load into its node cache."""
    if native_available():
        from tars_agent.sandbox.native_backend import NativeBackend

        native = NativeBackend()
        return "native", native.load_component, native.cache_key, native.close
    backend = WasmtimeBackend()  # its engine: the settings the agent deserializes with
    return "python", backend.load_component, compiled_cache_key, backend.close


def _compile_into(out: Path, key: str, compile: Callable[[], object]) -> Path:
    """``out/compiled/<key>.cwasm``: compiled now, or taken from the compiled cache a previous build left."""
    path = out / "compiled" / f"{key}.cwasm"
    if not path.is_file():
        compile()
        shutil.copyfile(prebuilt_compiled(key) or compiled_cache_dir() / f"{key}.cwasm", path)
    return path


def prebuild(out: Path, names: Sequence[str] | None = None) -> dict[str, object]:
    """Fills ``out`` and returns the manifest written to ``out/manifest.json``."""
    from tars_guests.build import componentize_py_version

    (out / "guests").mkdir(parents=True, exist_ok=True)
    (out / "compiled").mkdir(parents=True, exist_ok=True)
    path, load_component, cache_key, close = _compiler()
    entries: dict[str, dict[str, object]] = {}
    try:
        for name, built in sorted(builtin_guests(names).items()):
            data = built.read_bytes()
            component_path = out / "guests" / built.name
            if component_path.resolve() != built.resolve():
                shutil.copyfile(built, component_path)
            started = time.perf_counter()
            compiled_path = _compile_into(out, cache_key(data), functools.partial(load_component, built))
            entries[name] = {
                "component": component_path.relative_to(out).as_posix(),
                "compiled": compiled_path.relative_to(out).as_posix(),
                "componentBytes": len(data),
                "compiledBytes": compiled_path.stat().st_size,
                "compileSeconds": round(time.perf_counter() - started, 2),
            }
    finally:
        close()
    manifest: dict[str, object] = {
        "wasmtime": wasmtime_version(),
        "wasmtimePath": path,
        "componentizePy": componentize_py_version(),
        "guests": entries,
        "models": prebuild_models(out / "models"),
    }
    _write_atomic(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prebuild every builtin guest and its Wasmtime code into a directory.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help="directory to fill (TARS_PREBUILT_DIR at run time)")
    action.add_argument("--stage-guests", type=Path, metavar="DIR", help="copy only the componentize-py guests here")
    args = parser.parse_args(argv)
    if args.stage_guests:
        print("\n".join(map(str, stage_guests(args.stage_guests))))
    else:
        print(json.dumps(prebuild(args.out)))


if __name__ == "__main__":
    main()
