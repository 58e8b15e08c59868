"""Pure builders for how the cluster reaches a model: a Service without a selector, and
EndpointSlices listing the agents that hold the model, marked ready when the agent says it is loaded.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from typing import Any

from tars_api import TarsModel
from tars_api.labels import (
    MODEL_LABEL,
    OPERATOR,
    SERVICE_NAME_LABEL,
    SLICE_MANAGED_BY,
    model_labels,
)
from tars_operator.builders import owner_reference
from tars_operator.placement import AgentView

SERVICE_PORT = 80


def model_key(tm: TarsModel) -> str:
    return f"{tm.metadata.namespace}/{tm.metadata.name}"


def service_name(tm: TarsModel) -> str:
    return f"tars-model-{tm.metadata.name}"


def selector(tm: TarsModel) -> str:
    """Label selector published in status.selector for the scale subresource."""
    return f"{MODEL_LABEL}={tm.metadata.name}"


def endpoint_url(tm: TarsModel) -> str:
    return f"http://{service_name(tm)}.{tm.metadata.namespace}.svc/v2/models/{tm.metadata.name}/infer"


def _meta(tm: TarsModel, name: str, **labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": tm.metadata.namespace,
        "labels": {**model_labels(tm.spec.node_ref.name, tm.metadata.name), **labels},
        "ownerReferences": [owner_reference(tm)],
    }


def desired_model_service(tm: TarsModel) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(tm, service_name(tm)),
        "spec": {"ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP"}]},
    }


def _split_address(address: str) -> tuple[str, int] | None:
    """host and port of an agent address, or None where an EndpointSlice cannot carry it: the API
    server rejects loopback, link-local, multicast and unspecified addresses (and names)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        return None
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return None
    return host, int(port)


def desired_endpointslices(tm: TarsModel, placements: dict[str, int], agents: list[AgentView]) -> list[dict[str, Any]]:
    """One slice per agent port (a slice carries a single port list; in a cluster all agents share
    one port, so this is one slice; locally, agents standing for nodes listen on different ports)."""
    by_node = {a.node: a for a in agents}
    key = model_key(tm)
    by_port: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for node in sorted(placements):
        agent = by_node.get(node)
        split = _split_address(agent.address) if agent else None
        if agent is None or split is None:
            continue
        host, port = split
        ready = agent.ready and key in agent.loaded
        by_port[port].append(
            {
                "addresses": [host],
                "nodeName": node,
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
                **({"zone": agent.zone} if agent.zone else {}),
            }
        )
    return [
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": _meta(
                tm, f"{service_name(tm)}-{port}", **{SERVICE_NAME_LABEL: service_name(tm), SLICE_MANAGED_BY: OPERATOR}
            ),
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": endpoints,
        }
        for port, endpoints in sorted(by_port.items())
    ]
