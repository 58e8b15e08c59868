"""The model catalog: how a TarsModel's ``source`` (or inline ``function``) becomes a loaded model.

A loaded model is a :class:`ModelBundle`: the guest to run (a component of the ``tars:guest``
``function`` world, plus the app source it was built from), host capabilities that only this model's
guests can reach (e.g. ``nn.sentiment`` backed by weights this model loaded), an optional host-side
runtime, and the tensor metadata ``GET /v2/models/{name}`` reports.

This module holds only the types and the registry; the agent assembles its catalog
(:mod:`tars_agent.assembly`).

``Catalog.builtins`` maps the name after ``builtin://`` to a :data:`ModelFactory`;
``Catalog.schemes`` maps a URL scheme (``file``, ``configmap``) to one; ``Catalog.function`` builds
inline ``spec.function.code``. A factory receives a :class:`SourceRequest` and returns a
:class:`ModelBundle`. It runs on a worker thread and may take seconds (building a guest with
``tars_guests.build.build_guest`` is cached; loading weights is not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tars_agent.capabilities import CapabilityFn, ModelKey
from tars_agent.model_roots import confine
from tars_agent.sandbox.base import GuestSource
from tars_api.tarsmodel import TarsModelSpec


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
    function: ModelFactory | None = None  # inline spec.function.code
    # Where file:// sources may load from (the TarsNode's spec.modelRoots); none refuses them all.
    model_roots: tuple[Path, ...] = ()

    def factory_for(self, spec: TarsModelSpec) -> tuple[ModelFactory, str, str, Path | None]:
        if spec.source is None:
            if spec.function is None:
                raise UnknownSource("model has neither source nor function")
            if self.function is None:
                raise UnknownSource("this agent cannot build inline functions")
            return self.function, "inline", "function", None
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
        if scheme == "file" and path is not None:
            path = confine(path, self.model_roots)
        return factory(SourceRequest(key=key, spec=spec, scheme=scheme, name=name, path=path))
