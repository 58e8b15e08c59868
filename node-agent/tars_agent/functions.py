"""Users' own guest functions on the agent: checked first, then built and loaded like any guest.

Where a function's code comes from (a TarsModel of kind ``function``):

============================== ======================================================================
``spec.function.code``         Python defining ``handle(input)``; may call ``call_tool(name, **args)``
``configmap://NAME/KEY``       the ConfigMap NAME in the model's namespace: ``data[KEY]`` is Python,
                               ``binaryData[KEY]`` (KEY ending ``.wasm``) a component
``file:///path/guest.py``      Python in a file on the node
``file:///path/fn.wasm``       a WebAssembly component of the ``tars:guest`` ``function`` world, in
                               any language (guests/examples/rust builds one from Rust, c/ from C)
``configmap://NAME/KEY.js``    ``data[KEY.js]``: a JavaScript ES module exporting ``handle``, built
``file:///path/fn.js``         here with componentize-js (:mod:`tars_guests.jsbuild`), then loaded as
                               a component
============================== ======================================================================

Every one passes :mod:`tars_api.functions`' checks (size, Python syntax, the component's type
against the WIT world) before it is built or compiled; a failure raises
:class:`~tars_api.functions.InvalidFunction`, which the repository records as the model's load
error (reported in the Lease, so the TarsModel turns Degraded). Nothing of the user's code runs on the
host: Python's top level runs at build time inside componentize-py's own Wasm sandbox (no files, and
bounded here by :data:`BUILD_TIMEOUT_S`), then every request runs in a fresh sandbox under the model's
limits (see ``repository.effective_limits``: the lower of the TarsModel's and the TarsNode's).

Components are copied into a content-addressed cache before they are checked, so the bytes checked are
the bytes run even if the file on the node changes meanwhile; the compiled artifact goes into the
Wasmtime backend's compiled cache, so checking costs no second compilation.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tars_agent.catalog import Catalog, ModelBundle, ModelFactory, SourceRequest, UnknownSource
from tars_agent.sandbox.base import GuestSource
from tars_api.functions import (
    MAX_COMPONENT_BYTES,
    MAX_JAVASCRIPT_BYTES,
    MAX_PYTHON_BYTES,
    ConfigMapReader,
    FunctionCode,
    InvalidFunction,
    check_component_type,
    check_javascript,
    check_python,
    check_wasm_preamble,
    code_from_configmap,
)
from tars_api.tarsmodel import ModelKind

log = logging.getLogger(__name__)

# componentize-py runs the function's top level while building; an endless loop there must not hold
# one of the agent's two loader threads for ever.
BUILD_TIMEOUT_S = 180.0
_TAIL = 1500


# --- Python functions -------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two agents (or test workers) building the same function: one builds, the other then finds it.
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_error_text(stderr: str) -> str:
    """The useful end of componentize-py's output: the user's traceback, not the build tool's frames."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return "\n".join(lines[-12:])[-_TAIL:]


def build_function_guest(app_dir: Path, timeout_s: float | None = None) -> Path:
    """The component built from a generated function app (cached like ``tars_guests.build.build_guest``,
    under the same key), with a time limit on the build because the user's top level runs in it."""
    from tars_guests.build import cache_dir, componentize, source_digest, wit_dir

    timeout_s = BUILD_TIMEOUT_S if timeout_s is None else timeout_s
    key = source_digest(app_dir, wit_dir(), "function")
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{key}.wasm"
    if target.is_file():
        return target
    with _locked(directory / f"{key}.lock"):
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as tmp:
            out = Path(tmp) / "guest.wasm"
            try:
                result = componentize(app_dir, wit_dir(), "function", out, (), timeout_s)
            except subprocess.TimeoutExpired:
                raise InvalidFunction(
                    f"the function's top level did not finish within {timeout_s:.0f} s while building"
                ) from None
            if result.returncode != 0 or not out.is_file():
                # Almost always the user's top level raising (NameError, ImportError ...): say so.
                raise InvalidFunction(f"building the function failed:\n{_build_error_text(result.stderr)}")
            os.replace(out, target)
    return target


INLINE_FUNCTION_APP = '''"""Generated by the TARS node-agent from a TarsModel's spec.function.code."""
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host


def call_tool(name, **args):
    return json.loads(host.call(name, json.dumps(args)))


_namespace = {{"__name__": "function", "call_tool": call_tool}}
exec(compile({code!r}, "function.py", "exec"), _namespace)
_handle = _namespace["handle"]


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        try:
            return json.dumps(_handle(json.loads(input_json)))
        except (Err, MemoryError):
            # MemoryError escapes as a trap, so the agent reports the memory limit, not a guest error.
            raise
        except Exception as exc:
            raise Err(f"{{type(exc).__name__}}: {{exc}}") from None
'''


def inline_function_app(code: str) -> str:
    """The guest app wrapping a user's Python: ``handle`` over JSON values, ``call_tool`` for capabilities."""
    return INLINE_FUNCTION_APP.format(code=code)


def python_function_bundle(code: str, origin: str = "function.py") -> ModelBundle:
    """A guest from Python source defining ``handle(input)``: checked, then built (cached by content)."""
    from tars_guests.build import cache_dir

    check_python(code, origin)
    app = inline_function_app(code)
    app_dir = cache_dir() / "inline" / hashlib.sha256(app.encode()).hexdigest()[:32]
    if not (app_dir / "app.py").is_file():
        app_dir.mkdir(parents=True, exist_ok=True)
        tmp = app_dir / f".app.py.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(app)
        os.replace(tmp, app_dir / "app.py")
    return ModelBundle(guest=GuestSource(component=build_function_guest(app_dir), app_dir=app_dir))


# --- WebAssembly components -------------------------------------------------------------------------


def _user_component_dir() -> Path:
    from tars_guests.build import cache_dir

    return cache_dir() / "user-components"


def store_component(data: bytes) -> Path:
    """``data`` in the content-addressed store: what is checked is exactly what runs."""
    directory = _user_component_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{hashlib.sha256(data).hexdigest()}.wasm"
    if not path.is_file():
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


_engine_lock = threading.Lock()
_engine: Any = None


def checking_engine() -> Any:
    """An Engine configured like the Wasmtime backend's, so what it compiles the backend can load."""
    global _engine
    from wasmtime import Config, Engine

    with _engine_lock:
        if _engine is None:
            config = Config()
            config.epoch_interruption = True
            config.memory_init_cow = True
            _engine = Engine(config)
            # Freed before interpreter teardown: wasmtime's __del__ fails once its ffi module is gone.
            atexit.register(_engine.close)
        return _engine


def compile_and_check(path: Path, origin: str) -> None:
    """Compiles the component at ``path`` into the backend's compiled cache and checks its type."""
    from wasmtime import WasmtimeError
    from wasmtime.component import Component

    from tars_agent.sandbox.wasmtime_backend import compiled_cache_dir, compiled_cache_key

    data = path.read_bytes()
    engine = checking_engine()
    cached = compiled_cache_dir() / f"{compiled_cache_key(data)}.cwasm"
    component = None
    if cached.is_file():
        with contextlib.suppress(WasmtimeError):
            component = Component.deserialize_file(engine, str(cached))
    if component is None:
        try:
            component = Component(engine, data)
        except WasmtimeError as exc:
            raise InvalidFunction(f"{origin}: not a valid component: {str(exc).splitlines()[0][:500]}") from None
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(component.serialize())
        os.replace(tmp, cached)
    check_component_type(component, engine, origin)


def wasm_function_bundle(data: bytes, origin: str = "function.wasm") -> ModelBundle:
    """A guest from a user's component: preamble checked, stored, compiled and type-checked."""
    check_wasm_preamble(data, origin)
    path = store_component(data)
    compile_and_check(path, origin)
    return ModelBundle(guest=GuestSource(component=path))


def javascript_function_bundle(source: str, origin: str = "function.js") -> ModelBundle:
    """A guest from a JavaScript module exporting ``handle``: checked, built into a component here
    (cached by content; the module's top level runs in the build sandbox), then loaded as one."""
    from tars_guests.build import GuestBuildError
    from tars_guests.jsbuild import BUILD_WALL_S, JavaScriptUnavailable, build_js

    check_javascript(source, origin)
    try:
        built = build_js(source, timeout_s=BUILD_WALL_S)
    except JavaScriptUnavailable:
        raise  # the agent's lack, not the function's fault: reported as such, never as InvalidFunction
    except subprocess.TimeoutExpired:
        raise InvalidFunction(f"{origin}: building did not finish within {BUILD_WALL_S} s") from None
    except GuestBuildError as exc:
        raise InvalidFunction(f"{origin}: building the function failed:\n{exc}") from None
    return wasm_function_bundle(built.read_bytes(), origin)


def code_bundle(code: FunctionCode) -> ModelBundle:
    if code.language == "python":
        return python_function_bundle(code.python, code.origin)
    if code.language == "javascript":
        return javascript_function_bundle(code.javascript, code.origin)
    return wasm_function_bundle(code.wasm, code.origin)


# --- catalog factories ------------------------------------------------------------------------------


def read_function_file(path: Path) -> FunctionCode:
    """A function file on the node, refused by size before it is read."""
    limit = {".wasm": MAX_COMPONENT_BYTES, ".js": MAX_JAVASCRIPT_BYTES}.get(path.suffix, MAX_PYTHON_BYTES)
    try:
        size = path.stat().st_size
        if size > limit:
            raise InvalidFunction(f"{path}: {size} bytes exceed the limit of {limit}")
        if path.suffix == ".wasm":
            return FunctionCode("wasm", wasm=path.read_bytes(), origin=str(path))
        if path.suffix == ".js":
            return FunctionCode("javascript", javascript=path.read_text(encoding="utf-8"), origin=str(path))
        return FunctionCode("python", python=path.read_text(encoding="utf-8"), origin=str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidFunction(f"{path}: cannot be read: {exc}") from None


FUNCTION_FILE_SUFFIXES = (".py", ".wasm", ".js")


def function_file_factory(fallback: ModelFactory | None) -> ModelFactory:
    """file:// for functions (a ``.py``, ``.js`` or ``.wasm`` file); every other file:// source goes to ``fallback``
    (the runtimes' factory: checkpoints, guest app directories)."""

    def factory(request: SourceRequest) -> ModelBundle:
        path = request.path
        if request.spec.kind == ModelKind.FUNCTION and path is not None and path.suffix in FUNCTION_FILE_SUFFIXES:
            return code_bundle(read_function_file(path))
        if fallback is None:
            raise UnknownSource(f"this agent cannot load {request.name}")
        return fallback(request)

    return factory


def configmap_factory(read_configmap: ConfigMapReader) -> ModelFactory:
    """configmap://NAME/KEY, read from the model's namespace through ``read_configmap``."""

    def factory(request: SourceRequest) -> ModelBundle:
        name, _, key = request.name.partition("/")
        configmap = read_configmap(request.key.namespace, name)
        if configmap is None:
            raise InvalidFunction(f"configmap {name} not found in namespace {request.key.namespace}")
        return code_bundle(code_from_configmap(configmap, name, key))

    return factory


def kubernetes_configmap_reader(api_client: Any) -> ConfigMapReader:
    """Reads ConfigMaps with the agent's kubernetes client (its Role must allow configmaps get)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)

    def read(namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            found = core.read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        # camelCase keys (binaryData) and base64 text, as the API and code_from_configmap have them.
        serialized: Mapping[str, Any] = api_client.sanitize_for_serialization(found)
        return serialized

    return read


def inline_function_bundle(request: SourceRequest) -> ModelBundle:
    """Builds a guest from spec.function.code once it passes the function checks (cached by content)."""
    assert request.spec.function is not None
    return python_function_bundle(request.spec.function.code, "spec.function.code")


def install(catalog: Catalog, read_configmap: ConfigMapReader | None = None) -> None:
    """Adds function sources to ``catalog``: inline ``spec.function.code``, file:// .py/.wasm (wrapping
    the file:// factory already there) and, given a reader, configmap://."""
    catalog.function = inline_function_bundle
    catalog.schemes["file"] = function_file_factory(catalog.schemes.get("file"))
    if read_configmap is not None:
        catalog.schemes["configmap"] = configmap_factory(read_configmap)
