"""Validation of users' guest functions, before any of them reaches a sandbox: part of the API's contract,
so the operator, the node-agent and tarsctl run the very same checks.

The operator runs it on every TarsModel of kind ``function`` whose code it can see (inline
``spec.function.code`` and ``configmap://`` sources) and marks a bad one Degraded with reason
``InvalidFunction``, placing it nowhere. The node-agent runs the same checks again before it builds or
loads a function (it also sees ``file://`` sources, which live on the node), so a function that slips
past the operator (an on-demand load, a ConfigMap edited after the operator looked) is still refused.
``tarsctl fn deploy`` runs them too, so a user hears about a syntax error before anything is applied.

Checks, all without running the user's code:

- size: Python source at most :data:`MAX_PYTHON_BYTES` (the API's own bound), a component at most
  :data:`MAX_COMPONENT_BYTES`;
- Python: ``compile()`` (syntax, with the line and column) and a module-level ``handle`` definition;
- JavaScript: size and an exported ``handle`` (the node's build, componentize-js, parses it fully and
  the component it makes then passes the WebAssembly checks);
- WebAssembly: a component (not a core module) that Wasmtime compiles, whose type exports ``handle:
  func(input-json: string) -> result<string, string>`` and imports nothing but ``tars:guest/host``
  (with the right ``call`` signature) and the WASI interfaces the agent's linker provides.
"""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tars_api.tarsmodel import MAX_FUNCTION_CODE, ModelKind, TarsModelSpec

MAX_PYTHON_BYTES = MAX_FUNCTION_CODE
# A componentize-py build of a Python guest is about 18 MiB; leave room, refuse anything absurd.
MAX_COMPONENT_BYTES = 64 * 1024 * 1024
HOST_INTERFACE = "tars:guest/host@0.1.0"
# The WASI 0.2 packages wasmtime's add_wasip2 linker provides (the agent grants them nothing: no
# preopens, no network, no environment). wasi:http and friends are not linked, so a component that
# imports them could never instantiate: refuse it up front with a clear message.
ALLOWED_WASI_PACKAGES = ("wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:cli/", "wasi:filesystem/", "wasi:sockets/")
WASM_MAGIC = b"\0asm"
# Bytes 4..8 of the preamble: a core module is version 1 layer 0; a component has layer 1.
COMPONENT_LAYER = b"\x01\x00"
PYTHON_KEYS = (".py",)
WASM_KEYS = (".wasm",)
JAVASCRIPT_KEYS = (".js", ".mjs")
MAX_JAVASCRIPT_BYTES = MAX_FUNCTION_CODE
# `export function handle`, `export const handle =`, `export { handle }` or `export { f as handle }`: the
# forms an ES module can export a function named handle with.
_JS_EXPORTS_HANDLE = re.compile(
    r"\bexport\s+function\s+handle\b|\bexport\s+(?:const|let|var)\s+handle\b"
    r"|\bexport\s*\{[^}]*\bhandle\b[^}]*\}"
)


class InvalidFunction(ValueError):
    """A user's function was refused; the message says why (and where, for Python: line N)."""


@dataclass(frozen=True)
class FunctionCode:
    """A function's code, as the checks need it: Python text or component bytes."""

    language: str  # "python", "javascript" or "wasm"
    python: str = ""
    wasm: bytes = b""
    javascript: str = ""
    origin: str = "function.py"


# --- Python -----------------------------------------------------------------------------------------


def _defines_handle(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "handle":
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "handle" for t in node.targets):
            return True
        if isinstance(node, ast.ImportFrom | ast.Import) and any(
            (alias.asname or alias.name) == "handle" for alias in node.names
        ):
            return True
    return False


def check_python(code: str, filename: str = "function.py") -> None:
    """Raises InvalidFunction unless ``code`` compiles and defines ``handle`` at module level.

    compile() only parses and generates bytecode: nothing in ``code`` runs here.
    """
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > MAX_PYTHON_BYTES:
        raise InvalidFunction(f"{filename}: {size} bytes of Python exceed the limit of {MAX_PYTHON_BYTES}")
    try:
        compile(code, filename, "exec", dont_inherit=True)
        tree = ast.parse(code, filename)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        raise InvalidFunction(f"{filename}: {where}: {exc.msg}") from None
    except ValueError as exc:  # e.g. a NUL byte in the source
        raise InvalidFunction(f"{filename}: {exc}") from None
    if not _defines_handle(tree):
        raise InvalidFunction(f"{filename}: defines no handle(input) at module level")


# --- JavaScript -------------------------------------------------------------------------------------


def check_javascript(code: str, filename: str = "function.js") -> None:
    """Raises InvalidFunction unless ``code`` is within the size limit and exports ``handle``.

    Python cannot parse JavaScript; the node's build does, and says where a syntax error is. This
    catches the common mistakes (a CommonJS ``module.exports``, no ``export`` at all) before deploying.
    """
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > MAX_JAVASCRIPT_BYTES:
        raise InvalidFunction(f"{filename}: {size} bytes of JavaScript exceed the limit of {MAX_JAVASCRIPT_BYTES}")
    if "\0" in code:
        raise InvalidFunction(f"{filename}: contains a NUL character")
    if not _JS_EXPORTS_HANDLE.search(code):
        raise InvalidFunction(
            f"{filename}: exports no handle; an ES module must `export function handle(inputJson)` "
            "(JSON text in, JSON text out)"
        )


# --- WebAssembly components -------------------------------------------------------------------------


def check_wasm_preamble(data: bytes, origin: str = "function.wasm") -> None:
    """Cheap checks before compiling: size, magic, and a component rather than a core module."""
    if len(data) > MAX_COMPONENT_BYTES:
        raise InvalidFunction(f"{origin}: {len(data)} bytes exceed the component limit of {MAX_COMPONENT_BYTES}")
    if data[:4] != WASM_MAGIC:
        raise InvalidFunction(f"{origin}: not WebAssembly (no \\0asm header)")
    if data[6:8] != COMPONENT_LAYER:
        raise InvalidFunction(
            f"{origin}: a core WebAssembly module, not a component of the tars:guest function world "
            "(build with a component toolchain, e.g. cargo --target wasm32-wasip2 or wasm-tools component new)"
        )


def _is_string(valtype: Any) -> bool:
    from wasmtime.component import String

    return isinstance(valtype, String)


def _is_string_result(valtype: Any) -> bool:
    from wasmtime.component import ResultType

    return isinstance(valtype, ResultType) and _is_string(valtype.ok) and _is_string(valtype.err)


def _signature_ok(functype: Any, params: int) -> bool:
    from wasmtime.component import FuncType

    return (
        isinstance(functype, FuncType)
        and len(functype.params) == params
        and all(_is_string(t) for _name, t in functype.params)
        and _is_string_result(functype.result)
    )


def check_component_type(component: Any, engine: Any, origin: str = "function.wasm") -> None:
    """Raises InvalidFunction unless the compiled component fits the tars:guest ``function`` world."""
    from wasmtime.component import ComponentInstanceType

    ctype = component.type
    for name, extern in ctype.imports(engine).items():
        if name == HOST_INTERFACE:
            item = extern.ty
            funcs = item.exports(engine) if isinstance(item, ComponentInstanceType) else {}
            unexpected = sorted(set(funcs) - {"call"})
            if unexpected or ("call" in funcs and not _signature_ok(funcs["call"].ty, params=2)):
                raise InvalidFunction(
                    f"{origin}: imports {HOST_INTERFACE} with a different shape than guests/wit/tars.wit "
                    "(call: func(name: string, args-json: string) -> result<string, string>)"
                )
        elif name.startswith("tars:"):
            raise InvalidFunction(f"{origin}: imports {name}; this agent provides only {HOST_INTERFACE}")
        elif not name.startswith(ALLOWED_WASI_PACKAGES):
            raise InvalidFunction(f"{origin}: imports {name}, which the sandbox does not provide")
    exports = ctype.exports(engine)
    if "handle" not in exports:
        listed = ", ".join(sorted(exports)) or "none"
        raise InvalidFunction(f"{origin}: exports no `handle` function (exports: {listed})")
    if not _signature_ok(exports["handle"].ty, params=1):
        raise InvalidFunction(f"{origin}: `handle` must be func(input-json: string) -> result<string, string>")


def validation_engine() -> Any:
    """An Engine for type-checking only (the operator and tarsctl never run the component)."""
    from wasmtime import Engine

    return Engine()


def check_component_bytes(data: bytes, origin: str = "function.wasm", engine: Any = None) -> None:
    """Compiles ``data`` (without instantiating it) and checks its type against the WIT world."""
    from wasmtime import WasmtimeError
    from wasmtime.component import Component

    check_wasm_preamble(data, origin)
    engine = engine if engine is not None else validation_engine()
    try:
        component = Component(engine, data)
    except WasmtimeError as exc:
        raise InvalidFunction(f"{origin}: not a valid component: {str(exc).splitlines()[0][:500]}") from None
    check_component_type(component, engine, origin)


# --- TarsModel sources ------------------------------------------------------------------------------


def configmap_ref(source: str) -> tuple[str, str]:
    """("name", "key") of a ``configmap://NAME/KEY`` source."""
    rest = source.removeprefix("configmap://")
    name, _, key = rest.partition("/")
    if not name or not key:
        raise InvalidFunction(f"{source}: expected configmap://NAME/KEY")
    return name, key


def code_from_configmap(configmap: Mapping[str, Any], name: str, key: str) -> FunctionCode:
    """The function stored under ``key``: text (``data``) for Python, base64 ``binaryData`` for a component.

    The key's suffix says the language: ``.wasm`` is a component, ``.js`` (or ``.mjs``) JavaScript source
    in ``data``, anything else (``.py``) Python.
    """
    data = configmap.get("data") or {}
    binary = configmap.get("binaryData") or {}
    origin = f"configmap {name}/{key}"
    if key.endswith(WASM_KEYS):
        if key in binary:
            raw = binary[key]
            return FunctionCode("wasm", wasm=raw if isinstance(raw, bytes) else base64.b64decode(raw), origin=origin)
        if key in data:
            raise InvalidFunction(f"{origin}: a component must be stored in binaryData, not data")
    elif key.endswith(JAVASCRIPT_KEYS) and key in data:
        return FunctionCode("javascript", javascript=str(data[key]), origin=origin)
    elif key in data:
        return FunctionCode("python", python=str(data[key]), origin=origin)
    elif key in binary:
        raise InvalidFunction(f"{origin}: Python source must be stored in data (or name the key *.wasm)")
    keys = sorted({*data, *binary})
    raise InvalidFunction(f"{origin}: no such key (keys: {', '.join(keys) or 'none'})")


@functools.lru_cache(maxsize=256)
def _component_verdict(digest: str, data: bytes, origin: str) -> str | None:
    # The operator re-validates on every reconcile (Lease renewals trigger them); compiling the same
    # bytes again would give the same answer, so remember it by content.
    del digest  # part of the cache key only: hashing bytes is cheaper than comparing them
    try:
        check_component_bytes(data, origin)
    except InvalidFunction as exc:
        return str(exc)
    return None


def check_code(code: FunctionCode, engine: Any = None) -> None:
    """Raises InvalidFunction when ``code`` fails a check (``engine``: compile with this one, uncached)."""
    if code.language == "python":
        check_python(code.python, code.origin)
    elif code.language == "javascript":
        check_javascript(code.javascript, code.origin)
    elif engine is not None:
        check_component_bytes(code.wasm, code.origin, engine)
    elif (problem := _component_verdict(hashlib.sha256(code.wasm).hexdigest(), code.wasm, code.origin)) is not None:
        raise InvalidFunction(problem)


ConfigMapReader = Callable[[str, str], Mapping[str, Any] | None]


def function_code(spec: TarsModelSpec, namespace: str, read_configmap: ConfigMapReader) -> FunctionCode | None:
    """The code of a function TarsModel, where the caller can see it; None for other models and for
    ``file://`` and ``builtin://`` sources (those are checked by the agent that loads them).

    ``read_configmap(namespace, name)`` returns the ConfigMap object, or None when it does not exist.
    """
    if spec.kind != ModelKind.FUNCTION:
        return None
    if spec.source is None:
        if spec.function is None:
            return None
        return FunctionCode("python", python=spec.function.code, origin="spec.function.code")
    if not spec.source.startswith("configmap://"):
        return None
    name, key = configmap_ref(spec.source)
    configmap = read_configmap(namespace, name)
    if configmap is None:
        raise InvalidFunction(f"configmap {name} not found in namespace {namespace}")
    return code_from_configmap(configmap, name, key)


def validate_function(spec: TarsModelSpec, namespace: str, read_configmap: ConfigMapReader) -> str | None:
    """The reason a function TarsModel must not run, or None when it passes every check it can."""
    try:
        code = function_code(spec, namespace, read_configmap)
        if code is not None:
            check_code(code)
    except InvalidFunction as exc:
        return str(exc)
    return None
