"""The TARS custom resource API: pydantic models shared by the operator, the agent and tarsctl.

These models are the single source of truth; ``crds/`` is generated from them.
"""

from tars_api.meta import API_VERSION, GROUP, VERSION, Condition
from tars_api.tarsmodel import TarsModel, TarsModelSpec, TarsModelStatus
from tars_api.tarsnode import TarsNode, TarsNodeSpec, TarsNodeStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "TarsModel",
    "TarsModelSpec",
    "TarsModelStatus",
    "TarsNode",
    "TarsNodeSpec",
    "TarsNodeStatus",
]
