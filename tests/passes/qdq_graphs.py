"""Small QDQ graphs for the ORT lowering passes' tests, built with onnx.helper and a seeded rng."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxvq.core.runtime import make_session

F = TensorProto.FLOAT


class Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def name(self, stem: str) -> str:
        self.n += 1
        return f"{stem}{self.n}"

    def const(self, value, stem: str = "c") -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op: str, *inputs: str, outputs: int = 1, domain: str = "", **attrs) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.name(op),
                                           domain=domain, **attrs))
        return outs

    def qdq(self, x: str, scale: float, zp: int = 128) -> str:
        s, z = self.const(np.float32(scale), "s"), self.const(np.uint8(zp), "zp")
        return self.op("DequantizeLinear", self.op("QuantizeLinear", x, s, z)[0], s, z)[0]

    def qweight(self, k: int, n: int) -> str:
        w = self.rng.integers(-127, 128, (k, n)).astype(np.int8)
        s = (self.rng.random(n) * 0.01 + 0.001).astype(np.float32)
        return self.op("DequantizeLinear", self.const(w, "w"), self.const(s, "ws"),
                       self.const(np.zeros(n, np.int8), "wz"), axis=1)[0]

    def linear(self, x: str, k: int, n: int, bias: bool = True) -> str:
        y = self.op("MatMul", x, self.qweight(k, n))[0]
        if bias:
            y = self.op("Add", y, self.const(self.rng.standard_normal(n).astype(np.float32)))[0]
        return y

    def gelu_erf(self, x: str) -> str:
        d = self.op("Div", x, self.const(np.float32(np.sqrt(2.0))))[0]
        e = self.op("Add", self.op("Erf", d)[0], self.const(np.float32(1.0)))[0]
        return self.op("Mul", self.op("Mul", x, e)[0], self.const(np.float32(0.5)))[0]

    def model(self, inputs: dict[str, list], outputs: dict[str, list], opset: int = 17,
              ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info(k, F, v) for k, v in inputs.items()],
            [helper.make_tensor_value_info(k, F, v) for k, v in outputs.items()], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                 ir_version=8)


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return make_session(model, custom_ops=False).run(None, feeds)


def shipped(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the weight storage a target-ort run ends with on this machine
    (ort-unsigned-weights, QuantConfig.ort_weights "auto": uint8 W+128 where MLAS's int8 x uint8
    kernels saturate, else unchanged), so two graphs of the same int8 sums compare equal here."""
    from onnxvq.passes.pipelines import UNSIGNED_WEIGHTS

    return UNSIGNED_WEIGHTS.run(model, numeric="none")[0]


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]
