"""Start-up probe: can this machine run Hyperlight micro-VMs, and which backend do we use?

The checks go from cheap to conclusive: /dev/kvm exists and opens, the KVM API answers
KVM_GET_API_VERSION, the CPU advertises vmx/svm (a paravirtual /dev/kvm passes the first two and
still cannot run Hyperlight), and finally one real Hyperlight sandbox runs a line of Python. The
sandbox runs in a child process so a native crash cannot take the agent down.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tars_agent.sandbox.base import SandboxBackend

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
BACKENDS = ("auto", "wasmtime", "hyperlight")
WASMTIME_PATHS = ("auto", "native", "python")

_SANDBOX_CHECK = """
from hyperlight_sandbox import Sandbox
result = Sandbox(backend="wasm").run("print(6 * 7)")
assert result.stdout.strip() == "42", result
"""


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine."""


@dataclass(frozen=True)
class KvmProbe:
    usable: bool
    reason: str
    checks: dict[str, bool] = field(default_factory=dict)


def cpu_has_virtualization(cpuinfo: str) -> bool:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            if flags & {"vmx", "svm"}:
                return True
    return False


def probe_kvm(device: str = "/dev/kvm", cpuinfo_path: str = "/proc/cpuinfo", run_sandbox: bool = True) -> KvmProbe:
    checks: dict[str, bool] = {}
    if not os.path.exists(device):
        return KvmProbe(False, f"{device} does not exist", {"present": False})
    checks["present"] = True
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return KvmProbe(False, f"cannot open {device}: {exc.strerror}", {**checks, "openable": False})
    checks["openable"] = True
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return KvmProbe(False, f"KVM_GET_API_VERSION failed: {exc.strerror}", {**checks, "api": False})
    finally:
        os.close(fd)
    checks["api"] = version == KVM_API_VERSION
    if not checks["api"]:
        return KvmProbe(False, f"unexpected KVM API version {version}", checks)
    try:
        cpuinfo = Path(cpuinfo_path).read_text()
    except OSError:
        cpuinfo = ""
    checks["vmx_svm"] = cpu_has_virtualization(cpuinfo)
    if not checks["vmx_svm"]:
        return KvmProbe(False, "no vmx/svm in /proc/cpuinfo: /dev/kvm is paravirtual", checks)
    if not run_sandbox:
        return KvmProbe(True, "KVM present (sandbox check skipped)", checks)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _SANDBOX_CHECK], capture_output=True, text=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired:
        return KvmProbe(False, "probe Hyperlight sandbox did not finish in 120 s", {**checks, "sandbox": False})
    checks["sandbox"] = done.returncode == 0
    if not checks["sandbox"]:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return KvmProbe(False, f"probe Hyperlight sandbox failed: {last[:300]}", checks)
    return KvmProbe(True, "a probe Hyperlight sandbox ran", checks)


def select_backend(requested: str, probe: KvmProbe) -> tuple[str, str]:
    """(backend, reason) for the requested mode; forcing hyperlight where it cannot run is an error."""
    if requested not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {requested!r}; expected one of {', '.join(BACKENDS)}")
    if requested == "wasmtime":
        return "wasmtime", "wasmtime requested"
    if probe.usable:
        return "hyperlight", probe.reason
    if requested == "hyperlight":
        raise BackendUnavailable(f"hyperlight backend requested but Hyperlight cannot run here: {probe.reason}")
    return "wasmtime", f"fell back to wasmtime: {probe.reason}"


def native_available() -> bool:
    """Whether the ``tars_native`` extension (node-agent/native, built by ``make install``) imports."""
    try:
        import tars_native  # noqa: F401
    except ImportError:
        return False
    return True


def wasmtime_backend(path: str | None = None) -> SandboxBackend:
    """Wasmtime through the native extension, or through wasmtime-py.

    ``path`` (default ``$TARS_WASMTIME_PATH``, else ``auto``): ``native``, ``python``, or ``auto``
    (native when the extension imports). Both run the same sandbox with the same limits.
    """
    path = path or os.environ.get("TARS_WASMTIME_PATH") or "auto"
    if path not in WASMTIME_PATHS:
        raise BackendUnavailable(f"unknown wasmtime path {path!r}; expected one of {', '.join(WASMTIME_PATHS)}")
    if path == "native" or (path == "auto" and native_available()):
        from tars_agent.sandbox.native_backend import NativeBackend

        return NativeBackend()
    from tars_agent.sandbox.wasmtime_backend import WasmtimeBackend

    return WasmtimeBackend()


def create_backend(name: str) -> SandboxBackend:
    if name == "hyperlight":
        from tars_agent.sandbox.hyperlight_backend import HyperlightBackend

        return HyperlightBackend()
    return wasmtime_backend()
