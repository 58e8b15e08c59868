"""``x @ w`` with ``w`` stored in 8 bits: onnxruntime's DynamicQuantizeMatMul over one weight matrix.

For opt-in int8 generation (GPT-2's ``spec.precision: int8``). A generated token reads every weight
once, so its time is the bytes read: a quarter of float32's. The weights are quantized here per
output column (symmetric, zero point 0); onnxruntime quantizes each call's activations to uint8 and
multiplies in integers. The weights keep 7 bits (-64..63), not 8: onnxruntime's AVX2 kernels add
pairs of uint8 x int8 products in int16, which saturates with full-range weights (measured: 10 % of
the largest output off, against 2 % with 7 bits); this is onnxruntime's own ``reduce_range`` advice
for CPUs without VNNI.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

WEIGHT_LEVELS = 63  # 7 bits, see above


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights and one float32 scale per column, so that ``q * scale`` approximates ``w``."""
    peak = np.abs(w).max(axis=0)
    scale = np.where(peak > 0, peak / WEIGHT_LEVELS, 1.0).astype(np.float32)
    return np.clip(np.rint(w / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8), scale


class Int8Matmul:
    """Callable ``x -> x @ w`` for float32 ``x`` of shape (n, rows of w), on int8 weights."""

    def __init__(self, w: np.ndarray) -> None:
        from onnx import TensorProto, helper, numpy_helper  # only int8 models pay onnx's import

        rows, columns = w.shape
        weights, scale = quantize_columns(w)
        graph = helper.make_graph(
            [helper.make_node("DynamicQuantizeMatMul", ["x", "w", "scale", "zero"], ["y"], domain="com.microsoft")],
            "int8_matmul",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", rows])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", columns])],
            [
                numpy_helper.from_array(weights, "w"),
                numpy_helper.from_array(scale, "scale"),
                numpy_helper.from_array(np.zeros(columns, np.int8), "zero"),
            ],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        )
        options = ort.SessionOptions()
        # One token is one small product: parallelism comes from concurrent streams, as for MiniLM.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.nbytes = weights.nbytes + scale.nbytes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        (y,) = self._session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})
        return np.asarray(y)
