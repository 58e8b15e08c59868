"""The native HTTP front (``--native-http``, tars_agent.native_front): Rust owns the agent's port and
serves the infer route of native-path models Python has admitted; everything else reaches aiohttp.

Real guests on the native path, the real front on a real port, a real HTTP client. Which side
answered is read from the front's own counters (``drain``): the front counts only what it served.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import itertools
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tars_agent.agent import Agent
from tars_agent.capabilities import ModelKey
from tars_agent.main import parse_args, start_http
from tars_agent.native_front import NativeHttp, client_address
from tars_agent.sandbox.wasmtime_backend import WasmtimeBackend
from tars_agent.tenancy import FairAdmission
from tars_api.access import DefaultAccess
from tars_common.auth import AccessGuard, AuthConfig
from tests.fixtures import eventually
from tests.security.test_tls import issue

from .conftest import make_agent, tars_model
from .test_http_edges import tensor as edge_tensor
from .test_main import SENTIMENT_YAML, standalone_agent

INFER = "/v2/models/{}/infer"


def tensor(name: str, data: list[Any], datatype: str = "BYTES", **extra: Any) -> dict[str, Any]:
    return {"name": name, "shape": [len(data)], "datatype": datatype, "data": data, **extra}


BODIES: list[dict[str, Any]] = [
    {"inputs": [tensor("text", ["hello"])]},
    {"id": "r-1", "inputs": [tensor("text", ["a", "é", "z"])], "parameters": {"k": [1, None, {"x": 2.5}]}},
    {
        "inputs": [
            tensor("ints", [[1, -2], [3, 4]], "INT32", shape=[2, 2], parameters={"p": None}),
            tensor("floats", [0.1, 1e300, -0.0, 3], "FP64"),
            tensor("flags", [True, False], "BOOL"),
            tensor("big", [18446744073709551615], "UINT64"),
        ],
        "outputs": [{"name": "ints"}],
    },
]


@dataclass
class Served:
    agent: Agent
    front: NativeHttp
    session: aiohttp.ClientSession
    base: str

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        data = kwargs.pop("data", None)
        async with self.session.post(self.base + path, json=body if data is None else None, data=data, **kwargs) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    seen: Counter[tuple[str, str, int]] = field(default_factory=Counter)

    def served(self) -> dict[tuple[str, int], int]:
        """Requests the front answered itself since the last call, by (model, status)."""
        self.front.collect()
        counts: Counter[tuple[str, int]] = Counter()
        for (label, _route, status), count in (self.front.served - self.seen).items():
            counts[(label, status)] += count
        self.seen = self.front.served.copy()
        return dict(counts)


@asynccontextmanager
async def fronted(
    agent: Agent, guard: AccessGuard | None = None, admission: FairAdmission | None = None
) -> AsyncIterator[NativeHttp]:
    """``agent`` served with the native HTTP front on its port; everything closed afterwards, the agent too."""
    runner, listener, front = await start_http(agent, guard, admission, None, False, True)
    try:
        yield front
    finally:
        front.close()
        listener.close()
        await runner.cleanup()
        agent.close()


@pytest.fixture
async def served(backend: WasmtimeBackend) -> AsyncIterator[Served]:
    assert backend.path == "native", "tars_native is not installed: run make install (hack/build-native.sh)"
    agent = make_agent(backend, host="127.0.0.1", port=0)
    models = [
        tars_model("plain", "builtin://echo"),
        tars_model("capable", "builtin://echo", capabilities=["clock.now"]),
        tars_model("small-output", "builtin://echo", limits={"outputBytes": 2048}),
        tars_model("hostile-bare", "builtin://hostile"),
        tars_model("hostile-tight", "builtin://hostile", limits={"cpuTimeMs": 300}),
        tars_model("hostile-small-memory", "builtin://hostile", limits={"memoryMiB": 64}),
        tars_model("hostile-small-output", "builtin://hostile", limits={"outputBytes": 4096}),
    ]
    for model in models:
        assert await agent.ensure_loaded(model), agent.repository.failed
    async with fronted(agent) as front, aiohttp.ClientSession() as session:
        yield Served(agent, front, session, f"http://127.0.0.1:{agent.config.port}")


async def test_answers_equal_the_python_routes(served: Served) -> None:
    for body in BODIES:
        served.front.forget()
        first = await served.post(INFER.format("plain"), body)  # Python answers, and teaches the front
        assert served.served() == {}
        again = [await served.post(INFER.format("plain"), copy.deepcopy(body)) for _ in range(3)]
        assert served.served() == {("default/plain", 200): 3}
        assert first[0] == 200 and all(answer == first for answer in again), (first, again)
        assert first[1]["model_name"] == "plain" and first[1]["outputs"][0]["name"] == body["inputs"][0]["name"]


async def test_what_the_front_cannot_judge_goes_to_python(served: Served) -> None:
    assert (await served.post(INFER.format("plain"), BODIES[0]))[0] == 200
    cases = [
        ({"inputs": []}, 422, "inputs"),
        ({"inputs": [tensor("t", [1, 2], "INT8", shape=[3])]}, 400, "inputs.0.data"),
        ({"inputs": [tensor("t", [300], "UINT8")]}, 400, "inputs.0.data"),
        ({"inputs": [tensor("t", ["x"])], "extra": 1}, 422, "extra"),
        ({"inputs": [{"name": "t", "shape": [1.0], "datatype": "BYTES", "data": ["x"]}]}, 200, None),
    ]
    for body, status, where in cases:
        answer = await served.post(INFER.format("plain"), body)
        assert answer[0] == status, (body, answer)
        assert where is None or answer[1]["field"] == where, answer
    not_json = await served.post(INFER.format("plain"), data=b'{"inputs": [NaN]}')
    assert not_json[0] == 400 and not_json[1]["field"] == "body"
    nested: Any = ["x"]
    for _ in range(70):
        nested = [nested]
    deep = await served.post(INFER.format("plain"), {"inputs": [tensor("t", ["x"])], "parameters": {"n": nested}})
    assert deep[0] == 400 and "deeper" in deep[1]["error"]
    assert served.served() == {}  # every one of them answered by Python


async def test_a_limit_hit_on_the_front_is_answered_as_python_does(served: Served) -> None:
    small = {"inputs": [tensor("text", ["x"])]}
    large = {"inputs": [tensor("text", ["y" * 4096])]}
    python = await served.post(INFER.format("small-output"), large)  # not taught yet: Python
    assert (await served.post(INFER.format("small-output"), small))[0] == 200  # teaches
    assert served.served() == {}
    native = await served.post(INFER.format("small-output"), large)
    assert served.served() == {("default/small-output", 500): 1}
    assert python == native == (500, {"error": native[1]["error"], "reason": "output"})
    assert native[1]["error"].startswith("guest failed: output of ") and "limit of 2048" in native[1]["error"]
    metrics = await (await served.session.get(served.base + "/metrics")).text()
    assert 'tars_agent_guest_failures_total{model="default/small-output",reason="output"} 2.0' in metrics


async def test_routes_it_does_not_own_reach_aiohttp_unchanged(served: Served) -> None:
    await served.post(INFER.format("plain"), BODIES[0])
    async with served.session.get(served.base + "/v2/models/plain") as r:
        assert r.status == 200 and (await r.json())["name"] == "plain"
    async with served.session.get(served.base + "/v2/health/ready") as r:
        assert r.status == 200 and await r.json() == {"ready": True}
    invoke = await served.post("/v1/functions/plain:invoke", {"anything": [1, 2]})
    assert invoke == (200, {"anything": [1, 2]})
    versioned = await served.post("/v2/models/plain/versions/1/infer", BODIES[0])
    assert versioned[0] == 404
    async with served.session.put(served.base + INFER.format("plain"), json=BODIES[0]) as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"
    unknown = await served.post(INFER.format("nobody"), BODIES[0])
    assert unknown[0] == 404
    # A model with host capabilities stays on the Python path (its host calls, audit, fairness).
    for _ in range(2):
        assert (await served.post(INFER.format("capable"), BODIES[0]))[0] == 200
    # The one request the front served: the invocation of the model the first infer taught it.
    assert served.served() == {("default/plain", 200): 1}


async def test_metrics_count_what_the_front_served(served: Served) -> None:
    for _ in range(3):
        assert (await served.post(INFER.format("plain"), BODIES[0]))[0] == 200
    metrics = await (await served.session.get(served.base + "/metrics")).text()
    route = 'model="default/plain",route="/v2/models/{name}/infer",status="200"'
    assert f"tars_agent_requests_total{{{route}}} 3.0" in metrics
    assert f'tars_agent_request_duration_seconds_bucket{{le="+Inf",{route}}} 3.0' in metrics
    assert 'tars_agent_answer_duration_seconds_count{model="default/plain",start="warm"} 3.0' in metrics


async def test_a_changed_model_set_sends_requests_back_to_python(served: Served) -> None:
    for _ in range(2):
        assert (await served.post(INFER.format("plain"), BODIES[0]))[0] == 200
    assert served.served() == {("default/plain", 200): 1}
    await served.agent.repository.unload(ModelKey("default", "plain"))
    assert (await served.post(INFER.format("plain"), BODIES[0]))[0] == 404
    assert served.served() == {}


async def test_function_invocations_equal_the_python_routes(served: Served) -> None:
    body = {"text": "héllo", "n": [1, 2.5, None, True], "deep": {"a": {"b": []}}}
    first = await served.post("/v1/functions/plain:invoke", body)  # Python answers, and teaches
    again = [await served.post("/v1/functions/plain:invoke", body) for _ in range(2)]
    assert first == (200, body) and again == [first, first]
    assert served.served() == {("default/plain", 200): 2}
    bad = await served.post("/v1/functions/plain:invoke", data=b"[1, Infinity]")
    assert bad[0] == 400 and bad[1]["field"] == "body"
    assert served.served() == {}


HOSTILE: list[tuple[str, dict[str, Any], int, dict[str, Any]]] = [
    ("hostile-tight", {"do": "loop"}, 500, {"reason": "timeout"}),
    ("hostile-small-memory", {"do": "allocate", "mib": 1024}, 500, {"reason": "memory"}),
    ("hostile-small-output", {"do": "flood", "bytes": 100_000}, 500, {"reason": "output"}),
    ("hostile-bare", {"do": "crash"}, 500, {"error": "guest failed: guest crashed", "reason": "error"}),
    ("hostile-bare", {"do": "nothing"}, 422, {"error": "rejected by the model: unknown action: nothing"}),
    ("hostile-bare", {"do": "read_file", "path": "/etc/hostname"}, 200, {"blocked": True}),
    ("hostile-bare", {"do": "write_file"}, 200, {"blocked": True}),
    ("hostile-bare", {"do": "socket"}, 200, {"blocked": True}),
    ("hostile-bare", {"do": "env"}, 200, {"env": {}}),
    ("hostile-bare", {"do": "state"}, 200, {"calls": 1}),  # a fresh sandbox: its first call
]


async def test_the_sandbox_limits_hold_on_the_front(served: Served) -> None:
    for name in {name for name, *_ in HOSTILE}:
        assert await served.post(f"/v1/functions/{name}:invoke", {"do": "state"}) == (200, {"calls": 1})  # teaches
    for name, payload, status, expected in HOSTILE:
        answer = await served.post(f"/v1/functions/{name}:invoke", payload)
        assert answer[0] == status and expected.items() <= answer[1].items(), (name, payload, answer)
        if status == 500:
            assert "Traceback" not in answer[1]["error"] and "wasm" not in answer[1]["error"]
    assert sum(served.served().values()) == len(HOSTILE)  # every one of them answered by the front


async def test_the_load_the_agent_reports_counts_the_fronts_answers(served: Served) -> None:
    served.agent.start_load_window()
    for _ in range(6):
        assert (await served.post(INFER.format("plain"), BODIES[0]))[0] == 200
    assert served.served() == {("default/plain", 200): 5}
    # The autoscaler's inputs (the Lease's load report): all six requests, five of them the front's.
    assert round(served.agent.rates.rate("default/plain") * served.agent.rates.window_s) == 6
    assert served.agent.load_report()["default/plain"] > 0


async def test_the_edges_of_json_and_tensors_are_judged_as_python_does(served: Served) -> None:
    assert (await served.post(INFER.format("plain"), BODIES[0]))[0] == 200
    assert (await served.post("/v1/functions/plain:invoke", {"teach": True}))[0] == 200
    served.served()
    refused = [
        ("/v1/functions/plain:invoke", "[" + "9" * 5000 + "]", "body"),
        *(("/v1/functions/plain:invoke", '{"x": ' + n + "}", "body") for n in ("NaN", "-Infinity", "1e999")),
        ("/v1/functions/plain:invoke", "[" * 65 + "]" * 65, "body"),
        *(
            (INFER.format("plain"), json.dumps(edge_tensor(datatype, shape, data)), "inputs.0." + where)
            for datatype, shape, data, where in [
                ("BYTES", [-1], ["a"], "shape"),
                ("BYTES", [2, 2], [["a", "b"], ["c"]], "data"),
                ("UINT32", [1], [-1], "data"),
                ("INT32", [1], [1.5], "data"),
                ("FP32", [1], ["1.0"], "data"),
                ("BOOL", [1], [1], "data"),
                ("BYTES", [1], "not-a-list", "data"),
            ]
        ),
    ]
    for path, data, where in refused:
        status, answer = await served.post(path, data=data.encode())
        assert status == 400 and answer["field"] == where, (data[:80], answer)
    assert served.served() == {}  # all of them Python's
    fine = [
        ("/v1/functions/plain:invoke", "[" * 64 + "]" * 64),
        (INFER.format("plain"), json.dumps(edge_tensor("BYTES", [2, 1], [["a"], ["b"]]))),
        (INFER.format("plain"), json.dumps(edge_tensor("FP32", [2], [1, 2.5]))),
        (INFER.format("plain"), json.dumps(edge_tensor("BOOL", [0], []))),
    ]
    for path, data in fine:
        assert (await served.post(path, data=data.encode()))[0] == 200, data[:80]
    assert served.served() == {("default/plain", 200): len(fine)}  # all of them the front's


async def test_a_busy_model_keeps_to_its_fair_share_on_the_front(served: Served) -> None:
    """FairAdmission's rules on the front: a burner alone holds all workers but one; while a neighbour
    has work it is admitted again only up to its share of the cores, and the neighbour is served."""
    burner, neighbour = "hostile-tight", "plain"
    assert (await served.post(f"/v1/functions/{burner}:invoke", {"do": "state"}))[0] == 200
    assert (await served.post(INFER.format(neighbour), BODIES[0]))[0] == 200
    workers = served.agent.config.workers
    share = max(1, min(workers, os.cpu_count() or 1) // 2)

    def holding(model: str) -> tuple[int, int]:
        return next(((r, w) for m, r, w in served.front.front.admitted() if m == f"default/{model}"), (0, 0))

    burners = [
        asyncio.create_task(served.post(f"/v1/functions/{burner}:invoke", {"do": "loop"})) for _ in range(workers + 2)
    ]
    deadline = time.monotonic() + 60
    while holding(burner) != (workers - 1, 3):  # alone: every worker but one, the rest queued
        assert time.monotonic() < deadline, holding(burner)
        await asyncio.sleep(0.01)
    seen = [holding(burner)]
    while not all(task.done() for task in burners):
        assert time.monotonic() < deadline
        assert (await served.post(INFER.format(neighbour), BODIES[0]))[0] == 200  # the free worker
        seen.append(holding(burner))
    # Whenever burners left the queue, they were admitted only up to the burner's share.
    admitted = [running for (_, before), (running, after) in itertools.pairwise(seen) if after < before]
    assert admitted and all(running <= share for running in admitted), seen
    assert [task.result()[1].get("reason") for task in burners] == ["timeout"] * len(burners)


def test_the_agent_process_with_native_http_serves_and_stops(tmp_path: Path) -> None:
    """``tars-agent --native-http`` as users start it: the front on the agent's port, Python behind it,
    the compiled sentiment guest answered, every answer counted in the metrics, SIGTERM stopping all."""
    with standalone_agent(tmp_path, SENTIMENT_YAML, "--native-http", "--grpc-port", "0") as agent:
        base, proc = agent.base, agent.proc
        eventually(lambda: proc.poll() is None and http_get(f"{base}/v2/health/ready") == 200, 120, "ready")
        body = json.dumps({"text": "What a great day"}).encode()
        answers = [http_post(f"{base}/v1/functions/sentiment:invoke", body) for _ in range(3)]
        assert all(status == 200 for status, _ in answers) and answers[0] == answers[2]
        assert json.loads(answers[0][1])["scores"]["compound"] > 0.5
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
        assert 'route="/v1/functions/{name}:invoke",status="200"} 3.0' in metrics
    assert f"native HTTP front on 127.0.0.1:{agent.port}" in agent.output, agent.output[-2000:]


def test_native_http_speaks_tls_with_the_agents_certificate(tmp_path: Path) -> None:
    """With --tls-cert the front terminates TLS on the agent's port with the same files (the aiohttp
    app behind it stays on loopback): HTTPS answers, from Python then from the front; plain HTTP does not."""
    ca, cert, key = issue(tmp_path)
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with standalone_agent(tmp_path, SENTIMENT_YAML, "--native-http", "--grpc-port", "0", *tls) as agent:
        base, proc = f"https://127.0.0.1:{agent.port}", agent.proc
        trusted = ssl.create_default_context(cafile=str(ca))

        def get(path: str) -> int:
            with urllib.request.urlopen(base + path, timeout=5, context=trusted) as r:
                return int(r.status)

        eventually(lambda: proc.poll() is None and get("/v2/health/ready") == 200, 120, "ready over TLS")
        body = json.dumps({"text": "What a great day"}).encode()
        for _ in range(3):  # the first answered by Python behind the front, which teaches it
            request = urllib.request.Request(base + "/v1/functions/sentiment:invoke", data=body)
            with urllib.request.urlopen(request, timeout=10, context=trusted) as r:
                assert r.status == 200 and json.loads(r.read())["scores"]["compound"] > 0.5
        with urllib.request.urlopen(base + "/metrics", timeout=10, context=trusted) as r:
            assert 'route="/v1/functions/{name}:invoke",status="200"} 3.0' in r.read().decode()
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            http_get(f"http://127.0.0.1:{agent.port}/v2/health/ready")
    assert f"native HTTP front on 127.0.0.1:{agent.port}" in agent.output, agent.output[-2000:]


def http_get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(r.status)


def http_post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return int(r.status), r.read().decode()


def test_the_tarsnode_turns_the_front_on(tmp_path: Path) -> None:
    """spec.agent.nativeHttp reaches the agent through the configuration the operator renders."""
    config = tmp_path / "agent.yaml"
    config.write_text("nativeHttp: true\n")
    assert parse_args(["--config", str(config)]).native_http is True
    config.write_text("port: 8080\n")
    assert parse_args(["--config", str(config)]).native_http is False


async def test_a_full_queue_on_the_front_is_429_and_counted(backend: WasmtimeBackend) -> None:
    agent = make_agent(backend, host="127.0.0.1", port=0)
    assert await agent.ensure_loaded(tars_model("burner", "builtin://hostile"))
    admission = FairAdmission(agent.config.workers, 1, models_loaded=lambda: len(agent.repository.models))
    async with fronted(agent, admission=admission) as front:
        url = f"http://127.0.0.1:{agent.config.port}/v1/functions/burner:invoke"  # the port it got
        async with aiohttp.ClientSession() as session:

            async def status(payload: dict[str, Any]) -> int:
                async with session.post(url, json=payload) as r:
                    await r.read()
                    return r.status

            assert await status({"do": "state"}) == 200  # teaches the front
            # Alone, the model may hold every worker; one more waits; the next is refused at once
            # (each loop runs until its 1.5 s CPU deadline, far longer than these requests take to arrive).
            statuses = await asyncio.gather(*(status({"do": "loop"}) for _ in range(agent.config.workers + 2)))
        assert sorted(statuses) == [429] + [500] * (agent.config.workers + 1), statuses
        front.collect()
        assert front.served[("default/burner", "/v1/functions/{name}:invoke", 429)] == 1
        metrics = generate_latest(agent.metrics.registry).decode()
        assert 'tars_agent_rejected_requests_total{model="default/burner",why="overload"} 1.0' in metrics


async def test_a_host_call_refused_on_the_front_is_counted_and_audited_as_python_does(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """The front's models have no capabilities: it refuses their host calls itself (never entering
    Python), with Python's answer, in the same host-call metrics and audit log."""
    url = "/v1/functions/hostile-bare:invoke"
    calls = [{"do": "call", "name": "clock.now"}, {"do": "call", "name": "no.such.capability"}]
    with caplog.at_level(logging.INFO, logger="tars_agent.audit"):
        python = [await served.post(url, call) for call in calls]  # the first teaches the front
        front = [await served.post(url, call) for call in calls]
        assert served.served() == {("default/hostile-bare", 200): 3}
    assert python == front
    assert front[0] == (
        200,
        {"blocked": True, "error": "capability clock.now is not allowed for model default/hostile-bare"},
    )
    records = [r for r in caplog.records if r.name == "tars_agent.audit"]
    # Python's host_call ran for the one call Python served; the front's three were written from its figures.
    assert sorted(r.module for r in records) == ["capabilities", "native_front", "native_front", "native_front"]
    audit = [json.loads(r.getMessage()) for r in records]
    # One line a call (the front's are written when its figures are collected: grouped, not in order).
    assert Counter((a["model"], a["capability"], a["outcome"]) for a in audit) == {
        ("default/hostile-bare", call["name"], "denied"): 2 for call in calls
    }
    metrics = generate_latest(served.agent.metrics.registry).decode()
    for capability in ("clock.now", "<unknown>"):
        labels = f'capability="{capability}",model="default/hostile-bare",outcome="denied"'
        assert f"tars_agent_host_calls_total{{{labels}}} 2.0" in metrics
        assert f'tars_agent_host_call_duration_seconds_count{{capability="{capability}"}} 2.0' in metrics


async def test_the_fronts_durations_join_pythons_in_one_series_per_metric(served: Served) -> None:
    """The front's observations are added to the Python route's series (one family per name, as the
    exposition format requires), not exposed beside them."""
    for _ in range(4):  # the first answered by Python
        assert (await served.post(INFER.format("plain"), BODIES[0]))[0] == 200
    assert served.served() == {("default/plain", 200): 3}
    text = generate_latest(served.agent.metrics.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("tars_agent_request_duration_seconds", "tars_agent_answer_duration_seconds"):
        assert text.count(f"# TYPE {name} histogram") == 1
        samples = [s for s in families[name].samples if s.labels.get("model") == "default/plain"]
        count = next(s.value for s in samples if s.name == name + "_count")
        buckets = [s.value for s in samples if s.name == name + "_bucket"]
        assert count == 4 and buckets[-1] == 4 and buckets == sorted(buckets), samples


async def test_the_in_flight_gauge_counts_what_the_front_holds(served: Served) -> None:
    burner = "hostile-tight"
    assert (await served.post(f"/v1/functions/{burner}:invoke", {"do": "state"}))[0] == 200  # teaches

    def in_flight() -> float | None:
        served.front.collect()
        return served.agent.metrics.registry.get_sample_value(
            "tars_agent_in_flight_requests", {"model": f"default/{burner}"}
        )

    loops = [asyncio.create_task(served.post(f"/v1/functions/{burner}:invoke", {"do": "loop"})) for _ in range(3)]
    deadline = time.monotonic() + 60
    while in_flight() != 3:  # the loops run until their 300 ms CPU deadline: seen in flight meanwhile
        assert time.monotonic() < deadline and not any(task.done() for task in loops), in_flight()
        await asyncio.sleep(0.01)
    assert [(await task)[0] for task in loops] == [500] * 3
    assert in_flight() == 0


async def test_the_fronts_answers_count_as_allowed_auth_decisions(backend: WasmtimeBackend) -> None:
    agent = make_agent(backend, host="127.0.0.1", port=0)
    assert await agent.ensure_loaded(tars_model("open", "builtin://echo"))
    guard = AccessGuard(AuthConfig(enabled=True, default_access=DefaultAccess.OPEN))
    guard.attach_metrics(agent.metrics.registry)
    async with fronted(agent, guard) as front:
        url = f"http://127.0.0.1:{agent.config.port}{INFER.format('open')}"
        async with aiohttp.ClientSession() as session:
            for _ in range(3):  # the first answered by Python, which decides and teaches
                async with session.post(url, json=BODIES[0]) as r:
                    assert r.status == 200
        front.collect()
        assert sum(front.served.values()) == 2
        metrics = generate_latest(agent.metrics.registry).decode()
        assert 'tars_agent_auth_decisions_total{model="default/open",outcome="allowed"} 3.0' in metrics


async def test_forwarded_requests_carry_the_clients_address() -> None:
    """What the front forwards reaches aiohttp as from the client (``request.remote``), from the
    X-Forwarded-For entry the front appends: one a client sends itself is not believed."""
    import tars_native

    async def remote(request: web.Request) -> web.Response:
        return web.Response(text=request.remote or "")

    app = web.Application(middlewares=[client_address])
    app.router.add_get("/remote", remote)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream = runner.addresses[0][1]
    front = tars_native.NativeFront("127.0.0.1", 0, upstream, lambda *_: (500, "{}", 0), 1, 1, 1024, [1.0])
    try:
        # Another loopback address than the front's own upstream connection comes from.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.9", 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"http://127.0.0.1:{front.port}/remote"
            for headers in ({}, {"X-Forwarded-For": "203.0.113.7"}):
                async with session.get(url, headers=headers) as r:
                    assert (r.status, await r.text()) == (200, "127.0.0.9"), headers
        # Straight to aiohttp from loopback without the header: the peer itself.
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{upstream}/remote") as r:
            assert await r.text() == "127.0.0.1"
    finally:
        front.close()
        await runner.cleanup()


async def test_a_quick_model_made_to_loop_on_the_fronts_threads_stops_at_its_deadline(served: Served) -> None:
    """A model whose calls are quick runs them on the front's own threads; a loop there still stops at
    its CPU deadline with Python's answer, and the front keeps serving others meanwhile."""
    url = "/v1/functions/hostile-tight:invoke"
    python = await served.post(url, {"do": "loop"})  # not taught yet: Python's route
    for _ in range(3):  # teaches, then quick calls on the front
        assert await served.post(url, {"do": "state"}) == (200, {"calls": 1})
    assert (await served.post(INFER.format("plain"), BODIES[0]))[0] == 200  # teaches the neighbour
    served.served()
    loops = [asyncio.create_task(served.post(url, {"do": "loop"})) for _ in range(2)]
    neighbour = [await served.post(INFER.format("plain"), BODIES[0]) for _ in range(5)]
    native = [await loop for loop in loops]
    assert all(status == 200 for status, _ in neighbour)
    assert native == [python] * 2 and python[1]["reason"] == "timeout", (native, python)
    assert served.served() == {("default/hostile-tight", 500): 2, ("default/plain", 200): 5}
