"""Sandbox backends (wasmtime, hyperlight), their common interface and the KVM start-up probe."""

from tars_agent.sandbox.base import (
    FailureReason,
    GuestFailure,
    GuestInstance,
    GuestSource,
    HostCall,
    HostCallRefused,
    Limits,
    PreparedGuest,
    SandboxBackend,
)
from tars_agent.sandbox.probe import BackendUnavailable, KvmProbe, create_backend, probe_kvm, select_backend

__all__ = [
    "BackendUnavailable",
    "FailureReason",
    "GuestFailure",
    "GuestInstance",
    "GuestSource",
    "HostCall",
    "HostCallRefused",
    "KvmProbe",
    "Limits",
    "PreparedGuest",
    "SandboxBackend",
    "create_backend",
    "probe_kvm",
    "select_backend",
]
