"""The model catalog: how a TarsModel's ``source`` (or inline ``function``) becomes a loaded model.

A loaded model is a :class:`ModelBundle`: the guest to run (a component of the ``tars:guest``
``function`` world, plus the app source it was built from), host capabilities that only this model's
guests can reach (e.g. ``nn.sentiment`` backed by weights this model loaded), an optional host-side
runtime, and the tensor metadata ``GET /v2/models/{name}`` reports.

Extension point
---------------
``Catalog.builtins`` maps the name after ``builtin://`` to a :data:`ModelFactory`;
``Catalog.schemes`` maps a URL scheme (``file``, ``configmap``) to one. A factory receives a
:class:`SourceRequest` and returns a :class:`ModelBundle`. It runs on a worker thread and may take
seconds (building a guest with ``tars_guests.build.build_guest`` is cached; loading weights is not).

Model runtimes plug in without editing this file: if the module ``tars_agent.runtimes`` defines
``install(catalog: Catalog, capabilities: CapabilityRegistry) -> None``, :func:`default_catalog` calls
it, and it adds entries and agent-wide capabilities::

    def install(catalog, capabilities):
        catalog.builtins["sentiment-vader"] = vader_bundle
        catalog.schemes["file"] = file_bundle
        capabilities.register("nn.embed", embed)

This module provides ``builtin://echo`` (a test guest that echoes its input) and inline
``spec.function.code`` (Python that defines ``handle(input) -> output`` over JSON values and may call
``call_tool(name, **args)``), which it wraps into a guest app and builds.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tars_agent.capabilities import CapabilityFn, CapabilityRegistry, ModelKey
from tars_agent.sandbox.base import GuestSource
from tars_api.tarsmodel import TarsModelSpec

log = logging.getLogger(__name__)


@dataclass
class ModelBundle:
    guest: GuestSource
    capabilities: dict[str, CapabilityFn] = field(default_factory=dict)
    runtime: Any = None
    close: Callable[[], None] | None = None
    # Open Inference Protocol tensor metadata: [{"name": ..., "datatype": "BYTES", "shape": [-1]}].
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    platform: str = "tars-guest"


@dataclass(frozen=True)
class SourceRequest:
    key: ModelKey
    spec: TarsModelSpec
    # The parsed source: scheme ("builtin", "file", "configmap"), name (builtin name or
    # "configmap-name/key") and, for file://, the path on the node.
    scheme: str
    name: str
    path: Path | None = None


ModelFactory = Callable[[SourceRequest], ModelBundle]


class UnknownSource(LookupError):
    """No catalog entry serves this source."""


def parse_source(source: str) -> tuple[str, str, Path | None]:
    """("builtin", "echo", None), ("file", "/models/x", Path("/models/x")) or ("configmap", "cm/key", None)."""
    parts = urlsplit(source)
    if parts.scheme == "file":
        return "file", parts.path, Path(parts.path)
    if parts.scheme in {"builtin", "configmap"}:
        return parts.scheme, (parts.netloc + parts.path).strip("/"), None
    raise UnknownSource(f"unsupported source scheme in {source!r}")


@dataclass
class Catalog:
    builtins: dict[str, ModelFactory] = field(default_factory=dict)
    schemes: dict[str, ModelFactory] = field(default_factory=dict)

    def factory_for(self, spec: TarsModelSpec) -> tuple[ModelFactory, str, str, Path | None]:
        if spec.source is None:
            if spec.function is None:
                raise UnknownSource("model has neither source nor function")
            return inline_function_bundle, "inline", "function", None
        scheme, name, path = parse_source(spec.source)
        if scheme == "builtin":
            if name not in self.builtins:
                raise UnknownSource(f"no builtin model {name!r} (known: {', '.join(sorted(self.builtins))})")
            return self.builtins[name], scheme, name, path
        if scheme not in self.schemes:
            raise UnknownSource(f"this agent cannot load {scheme}:// sources")
        return self.schemes[scheme], scheme, name, path

    def resolve(self, key: ModelKey, spec: TarsModelSpec) -> ModelBundle:
        """Builds the bundle for a model (blocking: run it on a worker thread)."""
        factory, scheme, name, path = self.factory_for(spec)
        return factory(SourceRequest(key=key, spec=spec, scheme=scheme, name=name, path=path))


def _build(app_dir: Path) -> GuestSource:
    from tars_guests.build import build_guest

    return GuestSource(component=build_guest(app_dir), app_dir=app_dir)


def echo_bundle(_request: SourceRequest) -> ModelBundle:
    from tars_guests.testapps import ECHO_APP

    tensor = {"name": "input", "datatype": "BYTES", "shape": [-1]}
    return ModelBundle(guest=_build(ECHO_APP), inputs=[tensor], outputs=[tensor])


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
    return INLINE_FUNCTION_APP.format(code=code)


def inline_function_bundle(request: SourceRequest) -> ModelBundle:
    """Builds a guest from spec.function.code once it passes the function checks (cached by content)."""
    from tars_agent.functions import python_function_bundle

    assert request.spec.function is not None
    return python_function_bundle(request.spec.function.code, "spec.function.code")


def default_catalog(capabilities: CapabilityRegistry) -> Catalog:
    """The agent's catalog: builtin://echo, whatever ``tars_agent.runtimes.install`` adds, and users'
    functions from file:// (``tars_agent.functions``; cluster mode adds configmap://)."""
    from tars_agent import functions

    catalog = Catalog(builtins={"echo": echo_bundle})
    try:
        runtimes = importlib.import_module("tars_agent.runtimes")
    except ModuleNotFoundError as exc:
        if exc.name not in {"tars_agent.runtimes"}:
            raise
        runtimes = None
    install = getattr(runtimes, "install", None)
    if install is not None:
        install(catalog, capabilities)
    functions.install(catalog)
    return catalog
