"""How an agent's catalog is put together from the parts that serve models.

:mod:`tars_agent.catalog` is only the registry; the entries come from here, in order:
``builtin://echo`` (a test guest that echoes its input), ``builtin://sleep`` (a test guest that waits in
``clock.sleep``, Knative's autoscale sample), the model services' builtins, ``file://``
checkpoints and capabilities (:class:`~tars_agent.runtimes.services.ModelServices`, which the agent
owns), then users' functions (:mod:`tars_agent.functions`: inline code, ``file://`` ``.py``/``.wasm``;
cluster mode adds ``configmap://``).
"""

from __future__ import annotations

from pathlib import Path

from tars_agent import functions
from tars_agent.capabilities import CapabilityRegistry
from tars_agent.catalog import Catalog, ModelBundle, SourceRequest
from tars_agent.runtimes.services import ModelServices
from tars_agent.sandbox.base import GuestSource


def _build(app_dir: Path) -> GuestSource:
    from tars_guests.build import build_guest

    return GuestSource(component=build_guest(app_dir), app_dir=app_dir)


def echo_bundle(_request: SourceRequest) -> ModelBundle:
    from tars_guests.testapps import ECHO_APP

    tensor = {"name": "input", "datatype": "BYTES", "shape": [-1]}
    return ModelBundle(guest=_build(ECHO_APP), inputs=[tensor], outputs=[tensor])


def sleep_bundle(_request: SourceRequest) -> ModelBundle:
    from tars_guests.testapps import SLEEP_APP

    return ModelBundle(
        guest=_build(SLEEP_APP),
        inputs=[{"name": "sleep_ms", "datatype": "INT32", "shape": [1]}],
        outputs=[{"name": "slept_ms", "datatype": "FP64", "shape": [1]}],
    )


def default_catalog(services: ModelServices, capabilities: CapabilityRegistry) -> Catalog:
    """The agent's catalog; ``services`` also registers its capabilities in ``capabilities``."""
    catalog = Catalog(builtins={"echo": echo_bundle, "sleep": sleep_bundle})
    services.install(catalog, capabilities)
    functions.install(catalog)
    return catalog
