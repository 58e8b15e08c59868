"""gRPC over TLS: the agent's main() serves it with the data plane's certificate and reaches its own
HTTPS listener over loopback; a client that trusts the CA gets through, a plaintext one does not."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from aiohttp import web
from tritonclient.utils import InferenceServerException

from tars_agent.agent import Agent, AgentConfig
from tars_agent.main import start_grpc
from tars_agent.server import create_app
from tars_common import tls
from tarsctl.localcluster import free_port
from tests.protocols.conftest import SessionBackend, protocol_models
from tests.security.test_tls import issue


def _infer(address: str, **secure: object) -> float:
    client = grpcclient.InferenceServerClient(address, **secure)
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"Lovely and secure"], dtype=object))
    try:
        return float(client.infer("sentiment", [text], client_timeout=30).as_numpy("compound")[0])
    finally:
        client.close()


async def test_grpc_over_tls(protocol_backend: SessionBackend, edge_tiny: Path, tmp_path: Path) -> None:
    ca, cert, key = issue(tmp_path)
    agent = Agent(AgentConfig(host="127.0.0.1", port=free_port(), warm_pool_size=1), protocol_backend)
    assert await agent.ensure_loaded(protocol_models(edge_tiny)[0])
    runner = web.AppRunner(create_app(agent))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", agent.config.port, ssl_context=tls.server_context(cert, key)).start()
    grpc_port = free_port()
    server, bridge = await start_grpc(agent, grpc_port, True, (key.read_bytes(), cert.read_bytes()))
    assert server is not None and bridge is not None
    try:
        address = f"localhost:{grpc_port}"
        assert await asyncio.to_thread(_infer, address, ssl=True, root_certificates=str(ca)) > 0.5
        with pytest.raises(InferenceServerException) as plaintext:
            await asyncio.to_thread(_infer, address)
        assert plaintext.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        await server.stop(None)
        await bridge.close()
        await runner.cleanup()
        agent.close()
