"""The native Wasmtime path (``tars_native``, node-agent/native) beside the wasmtime-py one.

The native path is what ``--backend wasmtime`` runs when the extension imports; both paths give the
same answers to the same guests and host calls. The limit and isolation tests (test_isolation here,
test_hostile_functions for compiled guests) run on both paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tars_agent.sandbox.base import (
    FailureReason,
    GuestFailure,
    GuestSource,
    HostCallRefused,
    Limits,
    SandboxBackend,
)
from tars_agent.sandbox.probe import BackendUnavailable, create_backend, native_available, wasmtime_backend

from .conftest import backend_on_path

PATHS = ["native", "python"]


def test_native_is_the_default_wasmtime_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TARS_WASMTIME_PATH", raising=False)
    assert native_available(), "tars_native is not installed: run make install (hack/build-native.sh)"
    assert create_backend("wasmtime").path == "native"
    monkeypatch.setenv("TARS_WASMTIME_PATH", "python")
    python = create_backend("wasmtime")
    assert python.path == "python"
    python.close()
    with pytest.raises(BackendUnavailable, match="unknown wasmtime path"):
        wasmtime_backend("jit")


def host_call(name: str, args_json: str) -> str:
    if name == "clock.now":
        return json.dumps({"echo": json.loads(args_json)})
    raise HostCallRefused(f"capability {name} is not allowed")


@pytest.fixture(scope="module", params=PATHS)
def any_backend(request: pytest.FixtureRequest) -> SandboxBackend:
    return backend_on_path(request.param)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"x": [1, "é", None]}, {"x": [1, "é", None]}),
        ({"call": "clock.now", "args": {"a": 1}}, {"result": {"echo": {"a": 1}}}),
        ({"call": "fs.read", "args": {}}, {"error": "capability fs.read is not allowed"}),
    ],
)
def test_both_paths_give_the_same_answers(
    any_backend: SandboxBackend, guests: dict[str, Path], payload: object, expected: object
) -> None:
    guest = any_backend.prepare(GuestSource(guests["echo"]), host_call, Limits())
    assert json.loads(guest.instantiate().handle(json.dumps(payload))) == expected


def test_a_guest_error_and_a_broken_host_call_are_told_apart(
    any_backend: SandboxBackend, guests: dict[str, Path]
) -> None:
    def broken(_name: str, _args: str) -> str:
        raise ValueError("host detail that must not reach the guest")

    guest = any_backend.prepare(GuestSource(guests["echo"]), broken, Limits())
    answer = json.loads(guest.instantiate().handle(json.dumps({"call": "clock.now"})))
    assert answer == {"error": "host capability clock.now failed"}
    with pytest.raises(GuestFailure) as caught:
        guest.instantiate().handle(json.dumps({"fail": "no thanks"}))
    assert caught.value.reason is FailureReason.REJECTED and caught.value.public == "no thanks"


def test_an_instance_serves_one_request(any_backend: SandboxBackend, guests: dict[str, Path]) -> None:
    instance = any_backend.prepare(GuestSource(guests["echo"]), host_call, Limits()).instantiate()
    assert json.loads(instance.handle("[1]")) == [1]
    with pytest.raises(RuntimeError, match="one request only"):
        instance.handle("[2]")


def test_pool_slots_come_back_when_instances_are_freed(guests: dict[str, Path]) -> None:
    """More instances over time than the pooling allocator has slots: freed slots are reused."""
    from tars_agent.sandbox.native_backend import POOL_INSTANCES

    backend = backend_on_path("native")
    guest = backend.prepare(GuestSource(guests["echo"]), host_call, Limits())
    held = [guest.instantiate() for _ in range(50)]
    for instance in held:
        instance.close()
    for _ in range(POOL_INSTANCES + 10):
        guest.instantiate().close()
    assert json.loads(guest.instantiate().handle("[7]")) == [7]
