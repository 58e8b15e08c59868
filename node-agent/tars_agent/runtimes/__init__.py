"""Model runtimes run by the agent (pure numpy), shared read-only by every sandbox on the node.

Guests reach them only through host capabilities (see :mod:`tars_agent.runtimes.capabilities`):
``minilm`` (sentence embeddings), ``gpt2`` (GPT-2-architecture text generation), ``knowledge``
(per-tenant vector stores) and ``sentiment`` (VADER on the host, for ``nn.sentiment``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tars_agent.capabilities import CapabilityRegistry
    from tars_agent.catalog import Catalog
    from tars_agent.repository import ModelRepository


def install(catalog: Catalog, capabilities: CapabilityRegistry) -> None:
    """Catalog extension point (see ``tars_agent.catalog``): builtin models, file:// sources and
    the model capabilities. Imported lazily so importing the agent does not load numpy models."""
    from tars_agent.runtimes import services

    services.install(catalog, capabilities)


def attach(capabilities: CapabilityRegistry, repository: ModelRepository) -> None:
    """Lets functions.invoke reach the models in ``repository``; the agent calls it once both exist."""
    from tars_agent.runtimes import services

    bound = services.services_for(capabilities)
    if bound is not None:
        bound.attach_repository(repository)
