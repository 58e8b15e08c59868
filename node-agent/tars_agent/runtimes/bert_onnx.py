"""A BERT sentence encoder (embeddings, encoder, mean pooling, L2 norm) as an ONNX graph.

Built with the ``onnx`` package's helper API straight from the checkpoint's numpy weights, so no
torch exporter is needed. The graph takes ``input_ids`` (int64, batch x seq) and
``attention_mask`` (float32, 1 for tokens, 0 for padding) and returns ``embedding`` (float32,
batch x hidden, unit rows). It spells out the same float32 math as the reference
(sentence-transformers): exact GELU through Erf, LayerNormalization, masked softmax attention.
onnxruntime's own optimizer fuses the pieces (BiasGelu, SkipLayerNormalization, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from tars_agent.runtimes.onnx_graph import OPSET, OnnxGraph

# Added to the attention scores of padding positions: exp() of it is 0 in float32.
MASKED = -1e9


@dataclass(frozen=True)
class BertShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float


def bert_sentence_encoder(weights: Mapping[str, np.ndarray], shape: BertShape) -> onnx.ModelProto:
    """The ONNX model for a Hugging Face BERT checkpoint's tensors (names as in model.safetensors)."""
    g = OnnxGraph()
    w = {name: value.astype(np.float32) for name, value in weights.items() if value.dtype != np.int64}
    hidden, heads = shape.hidden_size, shape.num_heads
    head_dim = hidden // heads

    def layer_norm(x: str, prefix: str) -> str:
        scale = g.const(prefix + ".weight", w[prefix + ".weight"])
        bias = g.const(prefix + ".bias", w[prefix + ".bias"])
        return g.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=shape.layer_norm_eps)

    def linear(x: str, prefix: str) -> str:
        # torch stores Linear weights as (out, in); MatMul wants (in, out).
        matrix = g.const(prefix + ".weight", w[prefix + ".weight"].T)
        return g.op("Add", g.op("MatMul", x, matrix), g.const(prefix + ".bias", w[prefix + ".bias"]))

    zero, one, two = g.const("zero", [0]), g.const("one", [1]), g.const("two", [2])
    one_f = g.const("one_f", 1.0)
    to_heads, to_hidden = g.const("to_heads", [0, 0, heads, head_dim]), g.const("to_hidden", [0, 0, hidden])
    seq_len = g.op("Slice", g.op("Shape", "input_ids"), one, two)
    # Every input is segment 0, so its token-type row is folded into the position table.
    positions = w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    x = g.op(
        "Add",
        g.op("Gather", g.const("word_embeddings", w["embeddings.word_embeddings.weight"]), "input_ids"),
        g.op("Slice", g.const("position_embeddings", positions), zero, seq_len, zero),
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    masked = g.op("Mul", g.op("Sub", one_f, "attention_mask"), g.const("masked", MASKED))
    attention_bias = g.op("Unsqueeze", masked, g.const("head_and_query_axes", [1, 2]))
    scale, half, sqrt2 = g.const("scale", 1 / np.sqrt(head_dim)), g.const("half", 0.5), g.const("sqrt2", np.sqrt(2))
    for layer in range(shape.num_layers):
        p = f"encoder.layer.{layer}."

        def split(t: str) -> str:
            return g.op("Transpose", g.op("Reshape", t, to_heads), perm=[0, 2, 1, 3])

        q = split(linear(x, p + "attention.self.query"))
        k = g.op("Transpose", split(linear(x, p + "attention.self.key")), perm=[0, 1, 3, 2])
        v = split(linear(x, p + "attention.self.value"))
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), attention_bias)
        context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), to_hidden)
        attended = g.op("Add", linear(context, p + "attention.output.dense"), x)
        attended = layer_norm(attended, p + "attention.output.LayerNorm")
        inner = linear(attended, p + "intermediate.dense")
        gelu = g.op("Mul", g.op("Mul", inner, half), g.op("Add", g.op("Erf", g.op("Div", inner, sqrt2)), one_f))
        x = layer_norm(g.op("Add", linear(gelu, p + "output.dense"), attended), p + "output.LayerNorm")
    # Mean over real tokens, then unit length (sentence-transformers' Pooling + Normalize).
    mask = g.op("Unsqueeze", "attention_mask", g.const("last_axis", [-1]))
    summed = g.op("ReduceSum", g.op("Mul", x, mask), one, keepdims=0)
    counts = g.op("Max", g.op("ReduceSum", mask, one, keepdims=0), g.const("min_count", 1e-9))
    pooled = g.op("Div", summed, counts)
    norm = g.op("ReduceL2", pooled, g.const("hidden_axis", [-1]), keepdims=1)
    g.named("Div", [pooled, g.op("Max", norm, g.const("min_norm", 1e-12))], ["embedding"])
    graph = helper.make_graph(
        g.nodes,
        "bert_sentence_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tars-agent")
    model.ir_version = 8  # the oldest IR that carries opset 18, for older onnxruntime builds
    onnx.checker.check_model(model)
    return model
