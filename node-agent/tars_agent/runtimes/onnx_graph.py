"""A small builder of ONNX graphs from numpy weights (the ``onnx`` package's helper API underneath)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 18  # LayerNormalization (17) and Reduce* taking axes as an input (18)
CONTRIB = "com.microsoft"  # onnxruntime's own operators (DynamicQuantizeMatMul, FastGelu, ...)


@dataclass
class OnnxGraph:
    """Collects nodes and initializers; every node gets a fresh output name unless one is given."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)

    def const(self, name: str, value: np.ndarray | float | Sequence[int]) -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, *inputs: str, domain: str = "", **attributes: Any) -> str:
        output = f"{op_type}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], domain=domain, **attributes))
        return output

    def named(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attributes: Any) -> None:
        """A node whose outputs are graph outputs (or several)."""
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), **attributes))
