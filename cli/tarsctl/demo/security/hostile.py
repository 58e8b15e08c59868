"""The hostile guest functions the check deploys, and a listener that counts their connections."""

from __future__ import annotations

import socket
import threading
from typing import Any

from tars_api import API_VERSION
from tarsctl.demo.plan import SecurityPlan

HOSTILE_NAME = "tars-hostile"
NEIGHBOUR_FALLBACK = "security-neighbour"

# The hostile guest: inline spec.function.code, run by the agent in a fresh sandbox per request.
# It reports what the sandbox let it do instead of assuming; attacks the host must stop (loops,
# floods, allocation past the limit) are simply attempted.
HOSTILE_CODE = """
def _attempt(action):
    try:
        return {"blocked": False, "value": action()}
    except Exception as exc:
        return {"blocked": True, "error": type(exc).__name__ + ": " + str(exc)[:300]}


def _read(path):
    with open(path) as f:
        return f.read(4096)


def _connect(host, port):
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect((host, port))
    s.sendall(b"exfiltrated")
    return "connected"


def _allocate(mib):
    hoard = []
    try:
        for _ in range(mib):
            hoard.append(bytearray(1024 * 1024))
    except MemoryError:
        return {"blocked": True, "allocated_mib": len(hoard)}
    return {"blocked": False, "allocated_mib": len(hoard)}


def _burn(ms):
    import time
    end = time.monotonic() + ms / 1000
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def handle(input):
    do = input.get("do")
    if do == "ping":
        return {"pong": True}
    if do == "read_file":
        return {"attempts": [dict(_attempt(lambda p=p: _read(p)), path=p) for p in input["paths"]]}
    if do == "socket":
        return {"attempts": [dict(_attempt(lambda t=t: _connect(t[0], t[1])), target=t) for t in input["targets"]]}
    if do == "allocate":
        return _allocate(int(input["mib"]))
    if do == "loop":
        while True:
            pass
    if do == "flood":
        return {"data": "x" * int(input["bytes"])}
    if do == "burn":
        return {"iterations": _burn(int(input["ms"]))}
    if do == "sleep":  # blocks in the host (a WASI poll), not in the guest's own code
        import time
        time.sleep(float(input["s"]))
        return {"slept": True}
    if do == "call":
        return _attempt(lambda: call_tool(input["name"], **input.get("args", {})))
    raise ValueError("unknown action " + str(do))
"""


def hostile_model(name: str, tarsnode: str, replicas: int, granted: list[str], limits: SecurityPlan) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "TarsModel",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "tars-security-check"}},
        "spec": {
            "nodeRef": {"name": tarsnode},
            "kind": "function",
            "function": {"code": HOSTILE_CODE},
            "memoryMiB": 16,
            "replicas": replicas,
            "capabilities": granted,
            "limits": {
                "memoryMiB": limits.memory_limit_mib,
                "cpuTimeMs": limits.cpu_time_ms,
                "outputBytes": limits.output_bytes,
            },
        },
    }


class Listener:
    """A TCP listener on the host that counts the connections a guest manages to open."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


# Runs its top level at build time, under componentize-py: whatever it could write then, it wrote on
# the machine that built it. The snapshot keeps its findings for handle() to report.
BUILD_PROBE_CODE = """
import os
import sys

WROTE = []
READ = []
# Its own directory may be a scratch copy the build owns; every other one belongs to the host.
_OWN = os.path.dirname(os.path.abspath(globals().get("__file__", ".")))
for _dir in [d for d in sys.path if d and d != "." and os.path.abspath(d) != _OWN]:
    try:
        with open(os.path.join(_dir, "tars-build-probe-{token}.txt"), "w") as _f:
            _f.write("{token}")
        WROTE.append(_dir)
    except Exception:
        pass
    try:
        for _name in os.listdir(_dir):
            if _name.endswith(".pth"):
                with open(os.path.join(_dir, _name)) as _f:
                    READ.append(_name + ": " + _f.read(80))
    except Exception:
        pass


def handle(input):
    return {"wrote": WROTE, "read": READ[:5]}
"""


def probe_model(name: str, tarsnode: str, *, source: str | None = None, code: str | None = None) -> dict[str, Any]:
    """A one-replica function for a probe: from ``source``, or inline ``code``."""
    spec: dict[str, Any] = {"nodeRef": {"name": tarsnode}, "kind": "function", "memoryMiB": 16, "replicas": 1}
    if source is not None and not source.startswith("builtin://"):
        spec["source"] = source
    elif source is not None:  # a builtin model (the name probes): its kind must match
        spec.update(kind="sentiment", source=source)
    else:
        spec["function"] = {"code": code}
    return {
        "apiVersion": API_VERSION,
        "kind": "TarsModel",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "tars-security-check"}},
        "spec": spec,
    }
