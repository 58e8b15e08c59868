"""The pure parts: the binary tensor extension's codec, the gRPC translation, OpenAI's shapes."""

from __future__ import annotations

import json
import struct

import grpc
import numpy as np
import pytest

from tars_agent import openai_compat
from tars_common import oip_binary, oip_grpc


def _message(header: dict, *blobs: bytes) -> tuple[bytes, int]:
    encoded = json.dumps(header).encode()
    return encoded + b"".join(blobs), len(encoded)


def test_binary_request_round_trip_every_datatype() -> None:
    values = {
        "BOOL": [True, False],
        "INT8": [-128, 127],
        "UINT16": [0, 65535],
        "INT64": [-(2**63), 2**63 - 1],
        "UINT64": [0, 2**64 - 1],
        "FP16": [0.5, -2.0],
        "FP32": [1.5, -0.25],
        "FP64": [1e300, -1e-300],
        "BYTES": ["héllo", ""],
    }
    inputs, blobs = [], []
    for name, data in values.items():
        blob = oip_binary.encode(name, data)
        blobs.append(blob)
        inputs.append({"name": name, "datatype": name, "shape": [2], "parameters": {"binary_data_size": len(blob)}})
    body, length = _message({"inputs": inputs}, *blobs)
    decoded = oip_binary.decode_request(body, str(length))
    assert {t["name"]: t["data"] for t in decoded["inputs"]} == values
    assert all("parameters" not in t for t in decoded["inputs"])
    assert oip_binary.encode("BYTES", ["ab"]) == struct.pack("<I", 2) + b"ab"


@pytest.mark.parametrize(
    ("body", "length", "field", "words"),
    [
        (b'{"inputs": []}', "x", "Inference-Header-Content-Length", "byte count"),
        (b'{"inputs": []}', "99", "Inference-Header-Content-Length", "outside"),
        (b"[1, 2]", "6", "body", "object"),
        (b"{not json}", "10", "body", "not valid JSON"),
    ],
)
def test_binary_header_errors_name_the_part(body: bytes, length: str, field: str, words: str) -> None:
    with pytest.raises(oip_binary.BinaryError) as refused:
        oip_binary.decode_request(body, length)
    assert refused.value.field == field and words in refused.value.message


def _one(datatype: str, size: int, blob: bytes, **extra: object) -> tuple[bytes, int]:
    tensor = {"name": "x", "datatype": datatype, "shape": [1], "parameters": {"binary_data_size": size}, **extra}
    return _message({"inputs": [tensor]}, blob)


@pytest.mark.parametrize(
    ("message", "field", "words"),
    [
        (_one("FP32", 8, b"\0" * 4), "inputs.0.parameters.binary_data_size", "only 4 follow"),
        (_one("FP32", 2, b"\0" * 4), "body", "belong to no tensor"),
        (_one("FP32", 3, b"\0" * 3), "inputs.0", "whole number"),
        (_one("FP32", 4, np.array([np.nan], "<f4").tobytes()), "inputs.0", "NaN"),
        (_one("BYTES", 3, b"\x05\0\0"), "inputs.0", "cut short"),
        (_one("BYTES", 5, b"\x09\0\0\0a"), "inputs.0", "runs past"),
        (_one("BYTES", 5, b"\x01\0\0\0\xff"), "inputs.0", "UTF-8"),
        (_one("FP32", 4, b"\0" * 4, data=[1.0]), "inputs.0.data", "not both"),
        (_one("FP32", -1, b""), "inputs.0.parameters.binary_data_size", "byte count"),
    ],
)
def test_binary_tensor_errors_name_the_field(message: tuple[bytes, int], field: str, words: str) -> None:
    with pytest.raises(oip_binary.BinaryError) as refused:
        oip_binary.decode_request(*message)
    assert refused.value.field == field and words in refused.value.message


def test_binary_response_per_output_and_request_wide() -> None:
    response = {
        "model_name": "m",
        "outputs": [
            {"name": "a", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]},
            {"name": "b", "datatype": "BYTES", "shape": [1], "data": ["x"]},
        ],
    }
    request = {"outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}]}
    wanted = {o["name"] for o in response["outputs"] if oip_binary.wants_binary(request, o["name"])}
    assert wanted == {"a"}
    assert oip_binary.wants_binary({"parameters": {"binary_data_output": True}}, "b")
    body, length = oip_binary.encode_response(json.loads(json.dumps(response)), wanted) or (b"", 0)
    header, data = oip_binary.split(body, length)
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 8 and "data" not in header["outputs"][0]
    assert header["outputs"][1]["data"] == ["x"]
    assert np.frombuffer(data, "<f4").tolist() == [1.0, 2.0]
    assert oip_binary.encode_response(json.loads(json.dumps(response)), set()) is None


def test_grpc_request_becomes_the_binary_rest_request() -> None:
    m = oip_grpc.messages()
    request = m["ModelInferRequest"](model_name="m", id="r1")
    tensor = request.inputs.add(name="x", datatype="INT32", shape=[3])
    tensor.contents.int_contents.extend([1, -2, 3])
    tensor.parameters["scale"].int64_param = 2
    request.outputs.add(name="y")
    body, length = oip_grpc.rest_infer_request(request)
    decoded = oip_binary.decode_request(body, length)
    assert decoded["id"] == "r1" and decoded["parameters"] == {"binary_data_output": True}
    sent = {"name": "x", "datatype": "INT32", "shape": [3], "parameters": {"scale": 2}, "data": [1, -2, 3]}
    assert decoded["inputs"] == [sent]
    assert decoded["outputs"] == [{"name": "y", "parameters": {"binary_data": True}}]
    tensor.datatype = "INT8"
    tensor.contents.int_contents[0] = 300
    with pytest.raises(oip_grpc.CallFailed) as refused:
        oip_grpc.rest_infer_request(request)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details.startswith("inputs.0.contents.int_contents")
    request.raw_input_contents.extend([b"\0\0\0\0", b"extra"])
    with pytest.raises(oip_grpc.CallFailed, match="raw_input_contents"):
        oip_grpc.rest_infer_request(request)


def test_openai_shapes() -> None:
    chat = openai_compat.ChatRequest.model_validate(
        {
            "model": "g",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ],
            "stop": "\n",
            "max_completion_tokens": 5,
            "seed": 3,
        }
    )
    assert openai_compat.guest_input(chat) == {
        "prompt": "System: Be brief.\nUser: Hi\nAssistant:",
        "max_tokens": 5,
        "seed": 3,
        "stop": ["\n"],
    }
    reply = {"text": " one two  three", "finish_reason": "length", "prompt_tokens": 4, "completion_tokens": 3}
    assert "".join(openai_compat.pieces(reply["text"])) == reply["text"]
    events = openai_compat.stream_events(chat, reply)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": " one"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and "usage" not in chunks[-1]
    answer = openai_compat.answer(chat, reply)
    assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert answer["synthetic_weights"] is False
    assert openai_compat.unsupported_field({"logprobs": True}) == "logprobs"
    assert openai_compat.unsupported_field({"logprobs": False, "user": "x"}) is None
    assert openai_compat.error_body("no", "n", 400)["error"] == {
        "message": "no",
        "type": "invalid_request_error",
        "param": "n",
        "code": None,
    }


async def test_a_taken_grpc_port_is_refused_unless_shared_on_purpose() -> None:
    # gRPC shares ports by default: two unrelated agents (or gateways of two namespaces) on one
    # machine would split each other's calls without a word.
    bridge = oip_grpc.RestBridge("http://127.0.0.1:9")
    first, port = await oip_grpc.start(bridge, "127.0.0.1", 0, 1024)
    shared, shared_port = await oip_grpc.start(bridge, "127.0.0.1", 0, 1024, reuse_port=True)
    try:
        with pytest.raises(RuntimeError):
            await oip_grpc.start(bridge, "127.0.0.1", port, 1024)
        again, again_port = await oip_grpc.start(bridge, "127.0.0.1", shared_port, 1024, reuse_port=True)
        assert again_port == shared_port
        await again.stop(None)
    finally:
        await first.stop(None)
        await shared.stop(None)
