"""GPT-2's blocks on int8 weights as one onnxruntime graph (``spec.precision: int8``).

A generated token is 48 matrix products in its blocks with small steps between them (layer norms,
attention over the KV cache, GELU). Driven from Python, those steps cost nearly as much as the
products: a call into onnxruntime per product, numpy's per-call overhead, a thread hand-off to split
each product over two cores (5-8 ms of a 15-20 ms token here). As one graph, a token is one call, and
onnxruntime spreads each product over its intra-op threads. Matrices are quantized as in
:mod:`tars_agent.runtimes.int8_matmul` (7 bits per column, ``DynamicQuantizeMatMul``).

The graph takes the new tokens' embeddings ``x`` (n, embd), the causal ``mask`` (n, past + n) and
each layer's cached keys and values ``past_k{l}``/``past_v{l}`` (past, heads, head_dim: positions
first, so a prefix of the cache is one contiguous array), and returns the final layer norm's
``hidden`` (n, embd) and the new tokens' ``new_k{l}``/``new_v{l}`` (n, heads, head_dim).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from tars_agent.cpus import usable_cpus
from tars_agent.runtimes.int8_matmul import quantize_columns
from tars_agent.runtimes.onnx_graph import CONTRIB, OPSET, OnnxGraph

# The tanh approximation (GPT-2's "gelu_new") and the exact one, each with the bias folded in.
_GELU_OPS = {"gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu": "BiasGelu"}


class Int8Blocks:
    """``(x, mask, past keys, past values) -> (hidden, new keys, new values)`` for every block and
    the final layer norm. Takes the block matrices out of ``weights`` (their float32 copies are not
    kept); the rest of ``weights`` is only read."""

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        n_layer: int,
        n_head: int,
        epsilon: float,
        activation: str,
        threads: int | None = None,
    ) -> None:
        self.n_layer = n_layer
        self.nbytes = 0
        g = OnnxGraph()
        embd = weights["wte.weight"].shape[1]
        head_dim = embd // n_head
        zeros: dict[int, str] = {}

        def bias(name: str) -> str:  # a float32 tensor of the checkpoint, as it is
            return g.const(name, weights[name])

        def layer_norm(x: str, prefix: str) -> str:
            scale, shift = bias(prefix + ".weight"), bias(prefix + ".bias")
            return g.op("LayerNormalization", x, scale, shift, axis=-1, epsilon=epsilon)

        def int8_product(x: str, name: str) -> str:
            q, scale = quantize_columns(weights.pop(name))
            self.nbytes += q.nbytes + scale.nbytes
            columns = q.shape[1]
            if columns not in zeros:
                zeros[columns] = g.const(f"zero_{columns}", np.zeros(columns, np.int8))
            return g.op(
                "DynamicQuantizeMatMul",
                x,
                g.const(name, q),
                g.const(name + ".scale", scale),
                zeros[columns],
                domain=CONTRIB,
            )

        to_heads, to_embd = g.const("to_heads", [0, n_head, head_dim]), g.const("to_embd", [0, embd])
        thirds, inverse_sqrt = g.const("thirds", [embd] * 3), g.const("inverse_sqrt", 1 / np.sqrt(head_dim))
        inputs = [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", embd]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", "total"]),
        ]
        outputs = [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["n", embd])]
        x = "x"
        for layer in range(n_layer):
            p = f"h.{layer}."
            qkv = g.op(
                "Add", int8_product(layer_norm(x, p + "ln_1"), p + "attn.c_attn.weight"), bias(p + "attn.c_attn.bias")
            )
            q, k, v = (f"{part}_{layer}" for part in "qkv")
            g.named("Split", [qkv, thirds], [q, k, v], axis=-1)
            new_k, new_v = f"new_k{layer}", f"new_v{layer}"
            g.named("Reshape", [k, to_heads], [new_k])
            g.named("Reshape", [v, to_heads], [new_v])
            for name in (f"past_k{layer}", f"past_v{layer}"):
                inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["past", n_head, head_dim]))
            for name in (new_k, new_v):
                outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", n_head, head_dim]))
            keys = g.op("Concat", f"past_k{layer}", new_k, axis=0)
            values = g.op("Concat", f"past_v{layer}", new_v, axis=0)
            query = g.op("Transpose", g.op("Reshape", q, to_heads), perm=[1, 0, 2])
            scores = g.op("MatMul", query, g.op("Transpose", keys, perm=[1, 2, 0]))
            scores = g.op("Add", g.op("Mul", scores, inverse_sqrt), "mask")
            context = g.op("MatMul", g.op("Softmax", scores, axis=-1), g.op("Transpose", values, perm=[1, 0, 2]))
            context = g.op("Reshape", g.op("Transpose", context, perm=[1, 0, 2]), to_embd)
            attended = g.op("Add", int8_product(context, p + "attn.c_proj.weight"), bias(p + "attn.c_proj.bias"))
            x = g.op("Add", x, attended)
            inner = int8_product(layer_norm(x, p + "ln_2"), p + "mlp.c_fc.weight")
            inner = g.op(_GELU_OPS[activation], inner, bias(p + "mlp.c_fc.bias"), domain=CONTRIB)
            mlp = g.op("Add", int8_product(inner, p + "mlp.c_proj.weight"), bias(p + "mlp.c_proj.bias"))
            x = g.op("Add", x, mlp)
        g.named("Identity", [layer_norm(x, "ln_f")], ["hidden"])
        graph = helper.make_graph(g.nodes, "gpt2_int8_blocks", inputs, outputs, g.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(CONTRIB, 1)]
        )
        options = ort.SessionOptions()
        # One stream's token is one call: its products are split over two of the cores it may use
        # (a pod's CPU limit counts). Pool threads sleep rather than spin between calls, leaving the
        # cores to other requests.
        options.intra_op_num_threads = threads or min(2, usable_cpus())
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(
        self, x: np.ndarray, mask: np.ndarray, past_keys: list[np.ndarray], past_values: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        feeds = {"x": np.ascontiguousarray(x, dtype=np.float32), "mask": mask}
        for layer in range(self.n_layer):
            feeds[f"past_k{layer}"] = past_keys[layer]
            feeds[f"past_v{layer}"] = past_values[layer]
        hidden, *new = self._session.run(None, feeds)
        return np.asarray(hidden), [np.asarray(a) for a in new[0::2]], [np.asarray(a) for a in new[1::2]]
