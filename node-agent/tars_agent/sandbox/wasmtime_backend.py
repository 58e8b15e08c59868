"""The ``wasmtime`` backend: each request runs in a fresh Wasmtime store and component instance.

Isolation comes from WebAssembly plus what the store is given: WASI preview 2 with no preopened
directories, no sockets and an empty environment; the only way out is ``tars:guest/host.call``.
Limits: ``Store.set_limits`` caps linear memory; an epoch deadline (one ticker thread per engine
calling ``increment_epoch``) interrupts guests that run past their CPU budget — epochs count time
spent inside the guest, so this is CPU time for a guest that never blocks, and none can: WASI waits
answer at once (:func:`answer_waits_at_once`), so a guest past its deadline is really stopped and
its worker thread is free again; output size is checked
on return. ``memory_init_cow`` stays on: instances map the pre-initialised snapshot copy-on-write,
which is what keeps a fresh instance near 1 ms.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Generic, TypeVar

from wasmtime import Config, Engine, Store, WasiConfig, WasmtimeError
from wasmtime.component import Component, Func, Linker, ResourceAny, Variant

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

log = logging.getLogger(__name__)
C = TypeVar("C")

HOST_INTERFACE = "tars:guest/host@0.1.0"
# The WASI version wasmtime-py 50 implements (guests built for any 0.2.x resolve to it); overriding a
# function needs this exact name. tests/agent/test_blocking_guests.py fails if an upgrade changes it.
WASI_POLL = "wasi:io/poll@0.2.12"
EPOCH_TICK_S = 0.005
# Generous deadline while instantiating: start-up runs no user code after pre-initialisation.
_INSTANTIATE_DEADLINE_TICKS = int(30 / EPOCH_TICK_S)
_STDERR_KEEP = 8192
# Printed by CPython (MemoryError) or Rust's allocator when memory.grow is refused by the limit.
_MEMORY_MARKERS = (b"MemoryError", b"memory allocation of")


def wasmtime_version() -> str:
    return metadata.version("wasmtime")


def compiled_cache_dir() -> Path:
    root = os.environ.get("TARS_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "tars") / "compiled"


def compiled_cache_key(component_bytes: bytes) -> str:
    # Serialized code is only valid for the same Wasmtime build and engine settings.
    digest = hashlib.sha256(f"wasmtime {wasmtime_version()} epoch=1 cow=1\n".encode())
    digest.update(component_bytes)
    return digest.hexdigest()


def prebuilt_compiled(key: str) -> Path | None:
    """Compiled code made with the image (``$TARS_PREBUILT_DIR/compiled``, read-only), or None."""
    from tars_guests.build import prebuilt_dir

    root = prebuilt_dir()
    path = root / "compiled" / f"{key}.cwasm" if root else None
    return path if path and path.is_file() else None


class ComponentsByFile(Generic[C]):
    """Loaded components by file identity (path, mtime, size, inode), so a model loaded again, or a
    second model of the same guest (each woken from zero), skips reading and hashing its component:
    that took 60-85 ms of every load for the 19 MB CPython guests, and a few ms for compiled ones."""

    def __init__(self, load: Callable[[Path], C]) -> None:
        self._load = load
        self._by_file: dict[tuple[str, int, int, int], C] = {}

    def get(self, path: Path) -> C:
        stat = Path(path).stat()
        signature = (str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)
        component = self._by_file.get(signature)
        if component is None:
            component = self._by_file[signature] = self._load(path)
        return component


def load_compiled(
    key: str,
    compile: Callable[[], C],
    deserialize: Callable[[Path], C],
    serialize: Callable[[C], bytes | bytearray],
    unreadable: type[Exception],
) -> C:
    """Compiled code for ``key``: the image's prebuilt copy, our cache directory, or compiled now.

    The image's read-only prebuilt code first, then our own cache directory: deserialize trusts its
    bytes, so only the image build and this agent write either. Code made for another CPU or Wasmtime
    fails to load and is compiled again (into the writable cache).
    """
    cached = compiled_cache_dir() / f"{key}.cwasm"
    for candidate in (prebuilt_compiled(key), cached):
        if candidate is not None and candidate.is_file():
            try:
                return deserialize(candidate)
            except unreadable:
                log.warning("discarding unreadable compiled component %s", candidate)
    component = compile()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
    tmp.write_bytes(serialize(component))
    os.replace(tmp, cached)
    return component


def epoch_ticks(milliseconds: int) -> int:
    return max(1, math.ceil(milliseconds / 1000 / EPOCH_TICK_S))


class GuestStderr:
    """Keeps the start of the guest's stderr for logs and notices out-of-memory reports."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.out_of_memory = False

    def write(self, data: bytes) -> None:
        if not self.out_of_memory and any(marker in data for marker in _MEMORY_MARKERS):
            self.out_of_memory = True
        if len(self.head) < _STDERR_KEEP:
            self.head += data[: _STDERR_KEEP - len(self.head)]


def _discard(_data: bytes) -> None:
    return None


def classify_trap(message: str, stderr: GuestStderr) -> GuestFailure:
    """Maps a Wasmtime trap to the failure a client is told about."""
    if "wasm trap: interrupt" in message:
        return GuestFailure(FailureReason.TIMEOUT, "guest exceeded its CPU time limit")
    detail = stderr.head.decode("utf-8", "replace")
    if stderr.out_of_memory:
        return GuestFailure(FailureReason.MEMORY, "guest exceeded its memory limit", detail)
    if "out of bounds memory" in message or ("memory" in message and "limit" in message):
        return GuestFailure(FailureReason.MEMORY, "guest exceeded its memory limit", detail)
    return GuestFailure(FailureReason.ERROR, "guest crashed", f"{detail}\n{message[-2000:]}")


class WasmtimeInstance(GuestInstance):
    def __init__(self, prepared: WasmtimeGuest) -> None:
        self._limits = prepared.limits
        self._stderr = GuestStderr()
        store = Store(prepared.engine)
        store.set_limits(memory_size=prepared.limits.memory_bytes)
        wasi = WasiConfig()  # nothing preopened, no env, no sockets, no inherited stdio
        wasi.stderr_custom = self._stderr.write
        wasi.stdout_custom = _discard
        store.set_wasi(wasi)
        store.set_epoch_deadline(_INSTANTIATE_DEADLINE_TICKS)
        instance = prepared.linker.instantiate(store, prepared.component)
        func = instance.get_func(store, "handle")
        if func is None:
            raise RuntimeError("component exports no `handle` function (is it of the tars:guest function world?)")
        self._store: Store | None = store
        self._func: Func = func

    def handle(self, input_json: str) -> str:
        store = self._store
        if store is None:
            raise RuntimeError("a sandbox instance serves one request only")
        self._store = None
        store.set_epoch_deadline(epoch_ticks(self._limits.cpu_time_ms))
        try:
            result = self._func(store, input_json)
        except WasmtimeError as trap:
            raise classify_trap(str(trap), self._stderr) from None
        finally:
            store.close()
        if not isinstance(result, Variant) or not isinstance(result.payload, str):
            raise GuestFailure(FailureReason.ERROR, "guest returned a value of the wrong type")
        if result.tag == "err":
            # The guest's own error text is the guest's answer, not host detail: pass it on, bounded.
            raise GuestFailure(FailureReason.REJECTED, result.payload[:1024])
        return check_output(result.payload, self._limits)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class WasmtimeGuest(PreparedGuest):
    def __init__(self, engine: Engine, component: Component, host_call: HostCall, limits: Limits) -> None:
        self.engine = engine
        self.component = component
        self.limits = limits
        self.linker = Linker(engine)
        self.linker.add_wasip2()
        answer_waits_at_once(self.linker)
        with self.linker.root() as root, root.add_instance(HOST_INTERFACE) as host:
            host.add_func("call", _host_adapter(host_call))

    def instantiate(self) -> WasmtimeInstance:
        return WasmtimeInstance(self)


def _all_ready(store: Store, pollables: list[ResourceAny]) -> list[int]:
    for pollable in pollables:
        pollable.drop(store)  # borrows must be given back before the call returns
    return list(range(len(pollables)))


def _ready_now(store: Store, pollable: ResourceAny) -> None:
    pollable.drop(store)


def answer_waits_at_once(linker: Linker) -> None:
    """Replaces WASI's two blocking calls (``poll`` and ``pollable.block``) with ones that return at once.

    A thread blocked inside a host call is the one thing an epoch deadline cannot interrupt, and these
    are the only host calls a guest can block in: it has no files, sockets or stdin to wait on. Every
    pollable is reported ready, so a sleep or a select returns immediately and a guest that waits in a
    loop spends its CPU budget instead, which the epoch deadline bounds.
    """
    linker.allow_shadowing = True
    with linker.root() as root, root.add_instance(WASI_POLL) as poll:
        poll.add_func("poll", _all_ready)
        poll.add_func("[method]pollable.block", _ready_now)
    linker.allow_shadowing = False


def _host_adapter(host_call: HostCall) -> Callable[[object, str, str], Variant]:
    def call(_store: object, name: str, args_json: str) -> Variant:
        try:
            return Variant("ok", host_call(name, args_json))
        except HostCallRefused as refused:
            return Variant("err", str(refused))
        except Exception:
            # An exception escaping here would trap the guest and could leak host detail.
            log.exception("host call %s failed", name)
            return Variant("err", f"host capability {name} failed")

    return call


class WasmtimeBackend(SandboxBackend):
    name = "wasmtime"
    path = "python"

    def __init__(self) -> None:
        config = Config()
        config.epoch_interruption = True
        config.memory_init_cow = True
        self.engine = Engine(config)
        self._components: dict[str, Component] = {}
        self._by_file = ComponentsByFile(self.load_component)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="wasmtime-epoch", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(EPOCH_TICK_S):
            self.engine.increment_epoch()

    def load_component(self, path: Path) -> Component:
        """Compiled component, from memory, the on-disk cache, or compiled now (seconds)."""
        data = Path(path).read_bytes()
        key = compiled_cache_key(data)
        with self._lock:
            if key not in self._components:
                self._components[key] = load_compiled(
                    key,
                    compile=lambda: Component(self.engine, data),
                    deserialize=lambda file: Component.deserialize_file(self.engine, str(file)),
                    serialize=Component.serialize,
                    unreadable=WasmtimeError,
                )
            return self._components[key]

    def prepare(self, guest: GuestSource, host_call: HostCall, limits: Limits) -> WasmtimeGuest:
        return WasmtimeGuest(self.engine, self._by_file.get(guest.component), host_call, limits)

    def close(self) -> None:
        self._stop.set()
