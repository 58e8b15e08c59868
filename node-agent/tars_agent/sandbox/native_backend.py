"""The native ``wasmtime`` path: the same sandbox as :mod:`wasmtime_backend`, run by the ``tars_native``
extension (node-agent/native, Rust) instead of wasmtime-py.

What it buys is what wasmtime-py does not expose: the pooling allocator (instance slots and memory
images reused copy-on-write), ``InstancePre`` (imports resolved once per model, not per request) and
calls that release the GIL, so guests on worker threads run in parallel. The sandbox itself is the
same contract: WASI preview 2 with nothing preopened and waits that answer at once, ``tars:guest/
host.call`` as the only way out, memory capped per store, an epoch deadline for the CPU budget, the
output checked against its limit, one fresh instance per request. Failures are classified by the
same rules (:func:`classify_trap`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import tars_native

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
    check_output,
)
from tars_agent.sandbox.wasmtime_backend import ComponentsByFile, GuestStderr, classify_trap, load_compiled

log = logging.getLogger(__name__)

# Generous deadline while instantiating: start-up runs no user code after pre-initialisation.
_INSTANTIATE_DEADLINE_MS = 30_000
# Sandboxes the process can hold at once (warm pools plus calls in flight): the pooling allocator
# reserves address space for this many up front, not memory.
POOL_INSTANCES = int(os.environ.get("TARS_NATIVE_POOL_INSTANCES", "1100"))


def native_cache_key(component_bytes: bytes) -> str:
    # Serialized code is only valid for the same Wasmtime build and engine settings.
    digest = hashlib.sha256(f"tars_native wasmtime {tars_native.WASMTIME_VERSION} epoch=1 cow=1 pooling=1\n".encode())
    digest.update(component_bytes)
    return digest.hexdigest()


def _host_adapter(host_call: HostCall) -> Callable[[str, str], tuple[bool, str]]:
    def call(name: str, args_json: str) -> tuple[bool, str]:
        try:
            return True, host_call(name, args_json)
        except HostCallRefused as refused:
            return False, str(refused)
        except Exception:
            # An exception escaping here would reach the guest as host detail.
            log.exception("host call %s failed", name)
            return False, f"host capability {name} failed"

    return call


def native_outcome(kind: str, text: str, limits: Limits, stderr: Callable[[], tuple[bytes, bool]]) -> str:
    """The output of a call that ended with ``(kind, text)`` (the extension's outcome), or its failure;
    ``stderr()`` gives the guest's stderr head and whether it ran out of memory (read for traps only)."""
    if kind == "ok":
        return check_output(text, limits)
    if kind == "rejected":
        # The guest's own error text is the guest's answer, not host detail: pass it on, bounded.
        raise GuestFailure(FailureReason.REJECTED, text[:1024])
    if kind == "timeout":
        raise GuestFailure(FailureReason.TIMEOUT, "guest exceeded its CPU time limit")
    head = GuestStderr()
    data, head.out_of_memory = stderr()
    head.head += data
    raise classify_trap(text, head)


class NativeInstance(GuestInstance):
    def __init__(self, prepared: NativeGuest) -> None:
        self._limits = prepared.limits
        self._instance = prepared.guest.instantiate()

    def handle(self, input_json: str) -> str:
        kind, text = self._instance.handle(input_json, self._limits.cpu_time_ms)
        return native_outcome(kind, text, self._limits, self._instance.stderr)

    def close(self) -> None:
        self._instance.close()


class NativeGuest(PreparedGuest):
    def __init__(self, component: tars_native.NativeComponent, host_call: HostCall, limits: Limits) -> None:
        self.limits = limits
        self.guest = tars_native.NativeGuest(
            component, _host_adapter(host_call), limits.memory_bytes, _INSTANTIATE_DEADLINE_MS
        )

    def instantiate(self) -> NativeInstance:
        return NativeInstance(self)


class NativeBackend(SandboxBackend):
    """Wasmtime through ``tars_native``; reports itself as ``wasmtime`` (the same sandbox)."""

    name = "wasmtime"
    path = "native"

    def __init__(self) -> None:
        tars_native.init_engine(POOL_INSTANCES)
        self._components: dict[str, tars_native.NativeComponent] = {}
        self._lock = threading.Lock()
        self._by_file = ComponentsByFile(self.load_component)

    @staticmethod
    def cache_key(component_bytes: bytes) -> str:
        return native_cache_key(component_bytes)

    def load_component(self, path: Path) -> tars_native.NativeComponent:
        """Compiled component, from memory, the on-disk cache, or compiled now (seconds)."""
        data = Path(path).read_bytes()
        key = native_cache_key(data)
        with self._lock:
            if key not in self._components:
                self._components[key] = load_compiled(
                    key,
                    compile=lambda: tars_native.NativeComponent.compile(data),
                    deserialize=tars_native.NativeComponent.deserialize_file,
                    serialize=tars_native.NativeComponent.serialize,
                    unreadable=RuntimeError,
                )
            return self._components[key]

    def prepare(self, guest: GuestSource, host_call: HostCall, limits: Limits) -> NativeGuest:
        return NativeGuest(self._by_file.get(guest.component), host_call, limits)
