"""Calls made with the clients users already have (tritonclient's HTTP and gRPC clients, OpenAI's),
each synchronous as users call them; the tests run them in a thread beside the served agent.
Every check here asserts on what came back, so the same checks run against an agent and a gateway."""

from __future__ import annotations

import grpc
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

TEXTS = np.array([b"I love this, it is wonderful", b"This is awful and I hate it"], dtype=object)


def http_triton(url: str, headers: dict[str, str]) -> None:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_model_ready("sentiment", headers=headers)
    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(TEXTS)  # binary_data=True: the client's default
    result = client.infer("sentiment", [text], headers=headers)
    compound = result.as_numpy("compound")
    assert compound.dtype == np.float32 and compound.shape == (2,)
    assert compound[0] > 0.5 > -0.5 > compound[1]
    # Outputs asked by name, one in binary and one in JSON.
    outputs = [httpclient.InferRequestedOutput("pos"), httpclient.InferRequestedOutput("neg", binary_data=False)]
    result = client.infer("sentiment", [text], outputs=outputs, headers=headers)
    assert result.as_numpy("pos")[0] > result.as_numpy("pos")[1]
    assert result.get_output("neg")["data"][1] > 0
    embed = httpclient.InferInput("text", [2], "BYTES")
    embed.set_data_from_numpy(TEXTS)
    vectors = client.infer("sentence-bert", [embed], headers=headers).as_numpy("embedding")
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert abs(float(np.linalg.norm(vectors[0])) - 1.0) < 1e-3
    # Bad input: the shape promises three texts, the bytes hold two.
    text.set_shape([3])
    with pytest.raises(InferenceServerException) as refused:
        client.infer("sentiment", [text], headers=headers)
    assert "inputs.0.data" in refused.value.message() and "shape [3]" in refused.value.message()
    with pytest.raises(InferenceServerException, match="not"):
        client.infer("no-such-model", [embed], headers=headers)


def grpc_triton(address: str, headers: dict[str, str]) -> None:
    client = grpcclient.InferenceServerClient(address)
    assert client.is_server_live(headers=headers)
    assert "binary_tensor_data" in client.get_server_metadata(headers=headers).extensions
    assert client.is_model_ready("sentiment", headers=headers)
    meta = client.get_model_metadata("sentence-bert", headers=headers)
    assert meta.name == "sentence-bert" and meta.inputs[0].datatype == "BYTES"
    text = grpcclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(TEXTS)  # raw_input_contents
    compound = client.infer("sentiment", [text], headers=headers).as_numpy("compound")
    assert compound.shape == (2,) and compound[0] > 0.5 > -0.5 > compound[1]
    vectors = client.infer("sentence-bert", [text], headers=headers).as_numpy("embedding")
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    text.set_shape([3])
    with pytest.raises(InferenceServerException) as refused:
        client.infer("sentiment", [text], headers=headers)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "inputs.0.data" in refused.value.message()
    with pytest.raises(InferenceServerException) as missing:
        client.infer("no-such-model", [text], headers=headers)
    assert missing.value.status() == "StatusCode.NOT_FOUND"
    client.close()


def grpc_typed_contents(address: str, headers: dict[str, str]) -> None:
    """ModelInfer with typed contents (bytes_contents), through tritonclient's own generated stub."""
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="sentiment", id="typed-1")
        tensor = request.inputs.add(name="text", datatype="BYTES", shape=[2])
        tensor.contents.bytes_contents.extend(list(TEXTS))
        metadata = [(k.lower(), v) for k, v in headers.items()]
        response = stub.ModelInfer(request, metadata=metadata)
        assert response.id == "typed-1" and response.model_name == "sentiment"
        names = [output.name for output in response.outputs]
        compound = np.frombuffer(response.raw_output_contents[names.index("compound")], dtype="<f4")
        assert compound[0] > 0.5 > -0.5 > compound[1]
        request.inputs[0].datatype = "FP16"
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs.0.datatype" in (refused.value.details() or "")


def openai_generation(base_url: str, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/openai/v1", api_key=api_key, max_retries=0)
    completion = client.completions.create(model="edge-tiny", prompt="The operator", max_tokens=8, temperature=0)
    assert completion.object == "text_completion" and completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.model_extra is not None and completion.model_extra["synthetic_weights"] is True
    streamed = client.completions.create(
        model="edge-tiny", prompt="The operator", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == completion.choices[0].text

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]
    chat = client.chat.completions.create(model="edge-tiny", messages=messages, max_tokens=6, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage is not None
    assert chat.model_extra is not None and chat.model_extra["synthetic_weights"] is True
    stream = client.chat.completions.create(
        model="edge-tiny",
        messages=messages,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

    with pytest.raises(openai.BadRequestError) as wrong_kind:
        client.completions.create(model="sentiment", prompt="hi")
    assert isinstance(wrong_kind.value.body, dict) and wrong_kind.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.completions.create(model="edge-tiny", prompt="hi", n=2)
    assert isinstance(too_many.value.body, dict) and too_many.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=messages)
