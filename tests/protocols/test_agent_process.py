"""The agent as users start it (``tars-agent --standalone``): its own main() serves gRPC beside REST,
and a SIGTERM stops both."""

from __future__ import annotations

import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from tests.agent.test_main import agent_command, free_port
from tests.fixtures import eventually

SENTIMENT = """
apiVersion: tars.hyperlight.dev/v1alpha1
kind: TarsModel
metadata: {name: sentiment}
spec: {nodeRef: {name: local}, kind: sentiment, source: "builtin://sentiment-vader"}
"""


def test_standalone_agent_serves_grpc_and_stops_on_sigterm() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "sentiment.yaml"
        model.write_text(SENTIMENT)
        port, grpc_port = free_port(), free_port()
        flags = ["--model", str(model), "--backend", "wasmtime", "--host", "127.0.0.1", "--port", str(port)]
        command = agent_command("--standalone", *flags, "--grpc-port", str(grpc_port))
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            eventually(lambda: proc.poll() is None and client.is_server_ready(), 120, "the agent ready over gRPC")
            text = grpcclient.InferInput("text", [1], "BYTES")
            text.set_data_from_numpy(np.array([b"What a great day"], dtype=object))
            assert client.infer("sentiment", [text]).as_numpy("compound")[0] > 0.5
            client.close()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            output = proc.communicate()[0]
        assert f"gRPC (Open Inference Protocol) on 127.0.0.1:{grpc_port}" in output
