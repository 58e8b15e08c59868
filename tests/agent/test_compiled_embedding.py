"""The compiled embedding guest (guests/compiled/embedding, Rust) against the componentize-py app it
replaces on Wasmtime, both in real sandboxes: for every request, the same nn.embed call (texts and
layout) and the host's reply passed on as it came; for every bad request or refused call, the same
error. The real MiniLM behind it is checked in tests/models/test_guests.py, which loads the builtin.
"""

from __future__ import annotations

import json

import pytest

from tars_agent.capabilities import ModelKey
from tars_agent.runtimes.services import COMPILED_BUILTINS
from tars_agent.sandbox.base import (
    GuestFailure,
    GuestSource,
    HostCall,
    HostCallRefused,
    Limits,
    PreparedGuest,
    SandboxBackend,
)
from tars_api import TarsModel
from tars_guests.apps import app_dir, build_app
from tars_guests.compiled import build_compiled

from .conftest import tars_model

REQUESTS: list[object] = [
    {"text": "Pods are scheduled onto nodes."},
    {"texts": ["Pods are scheduled onto nodes.", "I like turtles 🐢", "x" * 10000]},
    {"texts": "one string is a list of one"},
    {"text": ["a list under the singular name", "is a batch"]},
    {"texts": None, "text": "a null plural is absent"},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["one tensor"]}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["two", "tensors"]}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["p"]}], "parameters": {"extra": 1}},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["p"]}], "parameters": 0},
    {"texts": ["a"] * 32},
]
BAD_REQUESTS: list[object] = [
    {"text": ""},
    {"text": "   "},
    {"text": 42},
    {"text": "x" * 10001},
    {"texts": []},
    {"texts": ["a"] * 33},
    {"texts": ["ok", 3]},
    {"texts": {"a": 1}},
    {},
    [1, 2],
    "{not json",
    {"inputs": [{"name": "text", "data": ["p"]}], "parameters": "yes"},
    {"inputs": [3]},
]


def echo_arguments(name: str, args_json: str) -> str:
    """The host's reply: the call it received, so each guest's nn.embed call is what comes back."""
    return json.dumps({"capability": name, "args": json.loads(args_json)})


def refuse(name: str, _args: str) -> str:
    raise HostCallRefused(f"capability {name} is not allowed")


def guests(backend: SandboxBackend, host: HostCall) -> tuple[PreparedGuest, PreparedGuest]:
    compiled = backend.prepare(GuestSource(build_compiled("embedding")), host, Limits())
    python = backend.prepare(GuestSource(build_app("embedding")), host, Limits())
    return compiled, python


def same_error(error: str) -> dict[str, str]:
    """The error, less the JSON parser's own words for invalid JSON (serde_json's, not CPython's)."""
    parsed = json.loads(error)
    parsed["error"] = parsed["error"].split(" (", 1)[0] if "is not valid JSON" in parsed["error"] else parsed["error"]
    return parsed


def answer(guest: PreparedGuest, body: object) -> tuple[str, str]:
    """("ok", reply) or ("error", the guest's public error text)."""
    raw = body if isinstance(body, str) else json.dumps(body)
    try:
        return "ok", guest.instantiate().handle(raw)
    except GuestFailure as failure:
        return "error", failure.public


@pytest.mark.parametrize("body", REQUESTS)
def test_the_same_nn_embed_call_as_the_python_guest(backend: SandboxBackend, body: object) -> None:
    compiled, python = guests(backend, echo_arguments)
    outcome, reply = answer(compiled, body)
    assert outcome == "ok", reply
    assert json.loads(reply) == json.loads(answer(python, body)[1])
    assert json.loads(reply)["capability"] == "nn.embed"


@pytest.mark.parametrize("body", BAD_REQUESTS)
def test_bad_requests_get_the_python_guests_error(backend: SandboxBackend, body: object) -> None:
    compiled, python = guests(backend, echo_arguments)
    outcome, error = answer(compiled, body)
    assert outcome == "error", error
    assert same_error(error) == same_error(answer(python, body)[1])
    assert "field" in json.loads(error)


def test_a_refused_call_is_worded_as_the_python_guest_words_it(backend: SandboxBackend) -> None:
    compiled, python = guests(backend, refuse)
    outcome, error = answer(compiled, {"text": "hello"})
    assert outcome == "error"
    assert json.loads(error) == json.loads(answer(python, {"text": "hello"})[1])
    assert json.loads(error)["error"] == "nn.embed: capability nn.embed is not allowed"


async def test_the_builtin_runs_the_compiled_guest_and_hyperlight_keeps_the_python_app(
    backend: SandboxBackend,
) -> None:
    from tars_agent.agent import Agent, AgentConfig

    assert COMPILED_BUILTINS["all-minilm-l6-v2"] == "embedding"
    agent = Agent(AgentConfig(warm_pool_size=1, workers=1), backend)
    try:
        model: TarsModel = tars_model("embed", "builtin://all-minilm-l6-v2", kind="embedding")
        assert await agent.ensure_loaded(model), agent.repository.failed
        guest = agent.repository.models[ModelKey("default", "embed")].bundle.guest
        assert guest.component == build_compiled("embedding")
        assert guest.app_dir == app_dir("embedding")
    finally:
        agent.close()
