"""Throughput of one standalone node-agent over its three wire protocols, side by side in one run.

    python bench/protocols.py [--seconds 6] [--clients 4] [--rounds 3]

``tars-agent --standalone --backend wasmtime`` serves VADER sentiment and MiniLM embeddings; the same
requests go over REST with JSON tensors, REST with the binary tensor extension (tritonclient's
default) and gRPC (``raw_input_contents``, tritonclient's generated stub). Each protocol gets a
latency run (sequential requests on one connection) and a throughput run (``--clients`` connections
sending back to back for ``--seconds`` in all, in ``--rounds`` turns the protocols take in turn, so
a busy machine's drift falls on each alike). gRPC is a front door onto the REST listener over
loopback (tars_common.oip_grpc), so its figures include that hop. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from models import free_port, wait_until_ready  # bench/ is the script's directory
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tars_common import oip_binary

MODELS = {
    "sentiment": ("builtin://sentiment-vader", "sentiment", [], ["What a wonderful, fast little node."]),
    "sentence-bert": (
        "builtin://all-minilm-l6-v2",
        "embedding",
        ["nn.embed"],
        ["TARS runs models in sandboxes.", "Each request gets a fresh one.", "Kubernetes places them.", "Hi."],
    ),
}
Call = Callable[[], bool]


def start_agent(directory: Path, port: int, grpc_port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tars_agent.main", "--standalone", "--backend", "wasmtime", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--grpc-port", str(grpc_port), "--log-level", "warning"]
    for name, (source, kind, capabilities, _) in MODELS.items():
        path = directory / f"{name}.json"
        spec = {"nodeRef": {"name": "bench"}, "source": source, "kind": kind, "capabilities": capabilities}
        body = {"apiVersion": "tars.hyperlight.dev/v1alpha1", "kind": "TarsModel", "metadata": {"name": name}}
        path.write_text(json.dumps({**body, "spec": spec}))
        command += ["--model", str(path)]
    return wait_until_ready(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), port)


def rest_call(port: int, model: str, texts: list[str], binary: bool) -> Callable[[], Call]:
    tensor: dict[str, Any] = {"name": "text", "datatype": "BYTES", "shape": [len(texts)]}
    if binary:
        blob = oip_binary.encode("BYTES", texts)
        header = json.dumps(
            {
                "inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        body, headers = header + blob, {oip_binary.HEADER_LENGTH: str(len(header))}
    else:
        body, headers = json.dumps({"inputs": [{**tensor, "data": texts}]}).encode(), {}
    headers["Content-Type"] = "application/octet-stream" if binary else "application/json"

    def connect() -> Call:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def call() -> bool:
            conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status == 200

        return call

    return connect


def grpc_call(port: int, model: str, texts: list[str]) -> Callable[[], Call]:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    request.raw_input_contents.append(oip_binary.encode("BYTES", texts))

    def connect() -> Call:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

        def call() -> bool:
            return len(stub.ModelInfer(request, timeout=60).raw_output_contents) > 0

        return call

    return connect


def latency_ms(connect: Callable[[], Call], count: int) -> tuple[float, float]:
    call = connect()
    for _ in range(5):
        call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        assert call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def throughput(connect: Callable[[], Call], clients: int, seconds: float) -> tuple[float, int]:
    done, failed = [0] * clients, [0] * clients
    stop_at = time.perf_counter() + seconds

    def client(index: int) -> None:
        call = connect()
        while time.perf_counter() < stop_at:
            try:
                ok = call()
            except Exception:
                ok = False
            done[index] += ok
            failed[index] += not ok

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started), sum(failed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests for latency")
    parser.add_argument("--rounds", type=int, default=3, help="turns the protocols take for throughput")
    args = parser.parse_args()
    port, gport = free_port(), free_port()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        agent = start_agent(Path(tmp), port, gport)
        try:
            for model, (*_, texts) in MODELS.items():
                protocols = {
                    "rest-json": rest_call(port, model, texts, binary=False),
                    "rest-binary": rest_call(port, model, texts, binary=True),
                    "grpc": grpc_call(gport, model, texts),
                }
                for protocol, connect in protocols.items():
                    p50, p99 = latency_ms(connect, args.requests)
                    results[f"{model}/{protocol}"] = {"p50_ms": p50, "p99_ms": p99, "rps": 0.0, "errors": 0}
                # Protocols take turns, so a busy machine's drift falls on each of them alike.
                for _ in range(args.rounds):
                    for protocol, connect in protocols.items():
                        rps, errors = throughput(connect, args.clients, args.seconds / args.rounds)
                        results[f"{model}/{protocol}"]["rps"] += rps / args.rounds
                        results[f"{model}/{protocol}"]["errors"] += errors
        finally:
            agent.terminate()
            agent.wait(timeout=30)
    print(f"{'model/protocol':<28}{'p50 ms':>9}{'p99 ms':>9}{'rps':>9}{'errors':>8}")
    for name, r in results.items():
        print(f"{name:<28}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['rps']:>9.1f}{r['errors']:>8}")
    print(f"{args.clients} clients for {args.seconds:g} s each; latency over {args.requests} sequential requests")
    summary = {k: {m: round(v, 2) for m, v in r.items()} for k, r in results.items()}
    print(json.dumps({"bench": "protocols", "clients": args.clients, "seconds": args.seconds, "results": summary}))


if __name__ == "__main__":
    main()
