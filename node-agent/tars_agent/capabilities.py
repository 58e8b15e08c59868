"""Host capabilities: named host functions a guest may call through ``tars:guest/host.call``.

Adding a capability (for the model runtimes: ``nn.embed``, ``nn.generate``, ``knowledge.query`` ...)::

    def embed(ctx: CallContext, args: dict[str, Any]) -> Any:   # any JSON-able value
        texts = args["texts"]                                   # KeyError/ValueError -> "bad arguments"
        return {"embeddings": runtime.embed(texts)}

    registry.register("nn.embed", embed)

``ctx.model`` is the calling model's ``ModelKey`` (namespace, name): key tenant data with it.
Raise :class:`CapabilityError` for an error the guest should see verbatim; any other exception
is logged and the guest sees only "host capability NAME failed". Functions run on the sandbox
worker thread that runs the guest; they may block (that time counts against the guest's wall time).

Every call is checked against the model's allowlist (``TarsModelSpec.capabilities``), counted in
``tars_agent_host_calls`` and written to the audit log (logger ``tars_agent.audit``, one JSON line per call:
model, capability, outcome, duration).

A capability that waits (``clock.sleep``) waits no later than the calling request's deadline
(:func:`request_deadline`, set by the repository around each guest call from the model's limits).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from tars_agent.metrics import AgentMetrics
from tars_agent.sandbox.base import HostCall, HostCallRefused

audit_log = logging.getLogger("tars_agent.audit")
log = logging.getLogger(__name__)

MAX_ARGS_BYTES = 1024 * 1024
MAX_LOG_MESSAGE = 2048
MAX_SLEEP_S = 60.0  # a ceiling even outside a request; inside one its deadline is the bound


class ModelKey(NamedTuple):
    """A model's identity on the agent: namespace and metadata.name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class CallContext:
    """Who is calling: the model the guest belongs to."""

    model: ModelKey


CapabilityFn = Callable[[CallContext, dict[str, Any]], Any]


class CapabilityError(Exception):
    """An error whose text the guest may see (e.g. "unknown collection")."""


class CapabilityUnavailable(CapabilityError):
    """What the capability needs is down (e.g. its database): the guest sees the text, and a request
    whose guest then fails is answered 503 with Retry-After (see :func:`take_unavailable`)."""


# Host calls run on the guest's worker thread: an unavailable one is remembered there for the pool.
_unavailable = threading.local()


def take_unavailable() -> bool:
    """Whether a capability was unavailable on this thread since the last call (and forgets it)."""
    seen = getattr(_unavailable, "seen", False)
    _unavailable.seen = False
    return bool(seen)


class CapabilityRegistry:
    def __init__(self) -> None:
        self._functions: dict[str, CapabilityFn] = {}

    def register(self, name: str, fn: CapabilityFn) -> None:
        """Makes ``fn`` callable as capability ``name``; registering a name twice is a bug."""
        if name in self._functions:
            raise ValueError(f"capability {name!r} is already registered")
        self._functions[name] = fn

    def names(self) -> list[str]:
        return sorted(self._functions)

    def get(self, name: str) -> CapabilityFn | None:
        return self._functions.get(name)


def invoke_capability(
    registry: CapabilityRegistry, ctx: CallContext, allowed: frozenset[str], name: str, args_json: str
) -> tuple[str, str]:
    """(outcome, reply) of one call: outcome is ok, denied, unknown, bad_args or failed.

    Pure apart from calling the capability; the reply is the JSON result for ok, else the error text
    the guest sees.
    """
    if name not in allowed:
        return "denied", f"capability {name} is not allowed for model {ctx.model}"
    fn = registry.get(name)
    if fn is None:
        return "unknown", f"capability {name} is not available on this agent"
    if len(args_json) > MAX_ARGS_BYTES:
        return "bad_args", f"arguments to {name} exceed {MAX_ARGS_BYTES} bytes"
    try:
        args = json.loads(args_json) if args_json else {}
    except json.JSONDecodeError as exc:
        return "bad_args", f"arguments to {name} are not JSON: {exc.msg}"
    if not isinstance(args, dict):
        return "bad_args", f"arguments to {name} must be a JSON object"
    try:
        return "ok", json.dumps(fn(ctx, args))
    except CapabilityUnavailable as exc:
        _unavailable.seen = True
        return "unavailable", str(exc)
    except CapabilityError as exc:
        return "failed", str(exc)
    except (KeyError, TypeError, ValueError) as exc:
        log.info("capability %s rejected arguments from %s: %r", name, ctx.model, exc)
        return "bad_args", f"bad arguments to {name}"
    except Exception:
        log.exception("capability %s failed for %s", name, ctx.model)
        return "failed", f"host capability {name} failed"


def host_call_for(
    registry: CapabilityRegistry, model: ModelKey, allowed: Iterable[str], metrics: AgentMetrics
) -> HostCall:
    """The ``host.call`` a model's sandboxes get: allowlisted, counted and audited."""
    ctx = CallContext(model)
    allowed_set = frozenset(allowed)
    label = str(model)

    def host_call(name: str, args_json: str) -> str:
        started = time.perf_counter()
        outcome, reply = invoke_capability(registry, ctx, allowed_set, name, args_json)
        duration = time.perf_counter() - started
        # Unknown names are guest-chosen: do not let them create unbounded label values.
        cap_label = name if registry.get(name) is not None else "<unknown>"
        metrics.host_calls.labels(label, cap_label, outcome).inc()
        metrics.host_call_latency.labels(cap_label).observe(duration)
        audit_log.info(
            json.dumps(
                {"model": label, "capability": name[:200], "outcome": outcome, "duration_ms": round(duration * 1000, 3)}
            )
        )
        if outcome != "ok":
            raise HostCallRefused(reply)
        return reply

    return host_call


def _clock_now(_ctx: CallContext, _args: dict[str, Any]) -> Any:
    return {"unix": time.time()}


# The deadline of the guest call running on this worker thread (host calls run on the guest's thread).
_running = threading.local()


@contextmanager
def request_deadline(seconds: float) -> Iterator[None]:
    """Host calls made on this thread inside the block may wait until ``seconds`` from now at most."""
    previous = getattr(_running, "deadline", math.inf)
    _running.deadline = min(previous, time.monotonic() + seconds)
    try:
        yield
    finally:
        _running.deadline = previous


def time_left() -> float:
    """Seconds until the running request's deadline (infinite outside a guest call)."""
    return float(getattr(_running, "deadline", math.inf)) - time.monotonic()


def _clock_sleep(_ctx: CallContext, args: dict[str, Any]) -> Any:
    # Parks the worker thread (no spinning), like a latency-bound backend would keep a request open;
    # never past the request's deadline, so the worker is free again when the request's time is up.
    wanted = float(args["ms"]) / 1000
    if not math.isfinite(wanted) or wanted < 0:
        raise ValueError("ms must be a finite number >= 0")
    allowed = max(0.0, min(time_left(), MAX_SLEEP_S))
    time.sleep(min(wanted, allowed))
    if wanted > allowed:
        raise CapabilityError(f"clock.sleep stopped at the request's deadline after {allowed * 1000:.0f} ms")
    return {"slept_ms": round(wanted * 1000, 3)}


def _log_write(ctx: CallContext, args: dict[str, Any]) -> Any:
    message = str(args["message"])[:MAX_LOG_MESSAGE]
    logging.getLogger("tars_agent.guest").info("%s: %s", ctx.model, message)
    return {"logged": len(message)}


def default_registry() -> CapabilityRegistry:
    """A registry with the capabilities the agent itself provides (clock.now, clock.sleep, log.write)."""
    registry = CapabilityRegistry()
    registry.register("clock.now", _clock_now)
    registry.register("clock.sleep", _clock_sleep)
    registry.register("log.write", _log_write)
    return registry
