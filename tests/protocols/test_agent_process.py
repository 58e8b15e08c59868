"""The agent as users start it (``tars-agent --standalone``): its own main() serves gRPC beside REST,
and a SIGTERM stops both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from tests.agent.test_main import SENTIMENT_YAML, free_port, standalone_agent
from tests.fixtures import eventually


def test_standalone_agent_serves_grpc_and_stops_on_sigterm(tmp_path: Path) -> None:
    grpc_port = free_port()
    with standalone_agent(tmp_path, SENTIMENT_YAML, "--grpc-port", str(grpc_port)) as agent:
        proc = agent.proc
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        eventually(lambda: proc.poll() is None and client.is_server_ready(), 120, "the agent ready over gRPC")
        text = grpcclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"What a great day"], dtype=object))
        assert client.infer("sentiment", [text]).as_numpy("compound")[0] > 0.5
        client.close()
    assert f"gRPC (Open Inference Protocol) on 127.0.0.1:{grpc_port}" in agent.output
