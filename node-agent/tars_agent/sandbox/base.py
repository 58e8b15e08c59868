"""The sandbox interface every backend implements, and the failure kinds a guest can end with.

A backend turns a guest component (a WebAssembly component of the ``tars:guest`` ``function`` world)
into a :class:`PreparedGuest`; a prepared guest starts fresh :class:`GuestInstance` objects, each
used for exactly one ``handle`` call and then dropped, so nothing a request leaves behind reaches
the next one. Calls block: the pool runs them on worker threads.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# name, args_json -> result_json; raises HostCallRefused with the text the guest sees as err.
HostCall = Callable[[str, str], str]


class HostCallRefused(Exception):
    """A host call answered with an error result (not allowed, bad args, capability failed)."""


class FailureReason(enum.StrEnum):
    """Why a guest call produced no answer; the only detail a client is told."""

    TIMEOUT = "timeout"
    MEMORY = "memory"
    OUTPUT = "output"
    ERROR = "error"
    # The guest ran and refused the input with its own error (an Err result): the caller's fault.
    REJECTED = "rejected"
    # The guest failed after a host capability it called was unavailable (its database down): retry.
    UNAVAILABLE = "unavailable"


class GuestFailure(Exception):
    """A guest call ended without a result. ``public`` is safe to send to clients; ``detail`` is not."""

    def __init__(self, reason: FailureReason, public: str, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {public}")
        self.reason = reason
        self.public = public
        self.detail = detail


@dataclass(frozen=True)
class GuestSource:
    """What a backend may run: the built component, and the Python app it was built from if any.

    Wasmtime runs ``component``; the hyperlight-sandbox executor runs Python source, so it needs
    ``app_dir`` (a guest app directory with ``app.py``).
    """

    component: Path
    app_dir: Path | None = None


@dataclass(frozen=True)
class Limits:
    """Per-request ceilings enforced on one sandbox."""

    memory_bytes: int = 256 * 1024 * 1024
    cpu_time_ms: int = 2000
    wall_timeout_ms: int = 10000
    output_bytes: int = 1024 * 1024


class GuestInstance(ABC):
    """One started sandbox, good for a single call."""

    @abstractmethod
    def handle(self, input_json: str) -> str:
        """Runs the guest's ``handle``; raises GuestFailure when the guest gives no result."""

    def close(self) -> None:  # noqa: B027 - most backends free everything when the object goes
        """Frees the sandbox now rather than at garbage collection."""


class PreparedGuest(ABC):
    """A compiled guest bound to one model's host calls, ready to start instances."""

    @abstractmethod
    def instantiate(self) -> GuestInstance:
        """A fresh sandbox; never one that has run a request."""


class SandboxBackend(ABC):
    """One way of running guests (``wasmtime`` or ``hyperlight``)."""

    name: str
    # How the backend runs guests, e.g. "native" or "python" for wasmtime; for logs and benchmarks.
    path: str = ""

    @abstractmethod
    def prepare(self, guest: GuestSource, host_call: HostCall, limits: Limits) -> PreparedGuest:
        """Compiles (or loads from cache) the guest and binds it to ``host_call`` and ``limits``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stops background threads."""


def check_output(output: str, limits: Limits) -> str:
    """The guest's output, or an OUTPUT failure when it is larger than the limit allows."""
    size = len(output.encode("utf-8", "surrogatepass"))
    if size > limits.output_bytes:
        raise GuestFailure(
            FailureReason.OUTPUT,
            f"output of {size} bytes exceeds the limit of {limits.output_bytes}",
        )
    return output
