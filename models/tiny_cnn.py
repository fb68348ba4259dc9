"""A small CNN written directly in ONNX, for fast tests (no torch): every structure a ResNet or a
MobileNetV2 export holds, at 16×16.

    input -> Conv-BN-Relu -> MaxPool -> basic block -> downsampling block (1×1 shortcut)
          -> inverted residual (1×1 expand, Clip(0, 6), depthwise 3×3, 1×1 project, identity Add)
          -> GlobalAveragePool -> Flatten -> Gemm -> logits

BatchNormalization nodes are kept separate (as the dynamo exporter emits them) with random
statistics, so folding them changes every weight. Counts: 9 Conv (1 depthwise), 9 BatchNorm,
3 residual Adds, 2 pools, 1 linear.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxvq.models.onnx_builder import GraphBuilder, float_input

TINY_CNN_COUNTS = {"convs": 9, "depthwise": 1, "batchnorms": 9, "residual_adds": 3, "pools": 2,
                   "linears": 1}


class _Cnn:
    def __init__(self, seed: int, opset: int):
        self.b = GraphBuilder(opset)
        self.rng = np.random.default_rng(seed)

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
                act: str | None = "relu") -> str:
        b, rng, name = self.b, self.rng, self.b.fresh("conv")
        w = rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))
        y = b.op("Conv", x, b.weight(f"{name}.weight", w.astype(np.float32)), kernel_shape=[k, k],
                 strides=[stride, stride], pads=[k // 2] * 4, group=group)
        stats = [rng.uniform(0.5, 1.5, cout), rng.normal(0, 0.1, cout), rng.normal(0, 0.1, cout),
                 rng.uniform(0.5, 1.5, cout)]
        y = b.op("BatchNormalization", y, *(b.weight(f"{name}.bn.{p}", v.astype(np.float32))
                                           for p, v in zip(("weight", "bias", "mean", "var"),
                                                           stats, strict=True)), epsilon=1e-5)
        if act == "relu":
            return b.op("Relu", y)
        if act == "relu6":
            return b.op("Clip", y, b.const(0.0), b.const(6.0))
        return y

    def basic(self, x: str, cin: int, cout: int, stride: int) -> str:
        y = self.conv_bn(self.conv_bn(x, cin, cout, 3, stride), cout, cout, 3, act=None)
        skip = x if stride == 1 and cin == cout else self.conv_bn(x, cin, cout, 1, stride, act=None)
        return self.b.op("Relu", self.b.op("Add", y, skip))

    def inverted(self, x: str, c: int, expand: int) -> str:
        h = self.conv_bn(x, c, c * expand, 1, act="relu6")
        h = self.conv_bn(h, c * expand, c * expand, 3, group=c * expand, act="relu6")
        return self.b.op("Add", self.conv_bn(h, c * expand, c, 1, act=None), x)


def build_tiny_cnn(seed: int = 0, opset: int = 17, image: int = 16,
                   classes: int = 10) -> onnx.ModelProto:
    """The CNN above with seeded random weights and BatchNorm statistics."""
    net = _Cnn(seed, opset)
    b = net.b
    x = net.conv_bn("input", 3, 8, 3)
    x = b.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = net.basic(x, 8, 8, 1)
    x = net.basic(x, 8, 16, 2)
    x = net.inverted(x, 16, 2)
    x = b.op("Flatten", b.op("GlobalAveragePool", x), axis=1)
    w = (net.rng.standard_normal((classes, 16)) * 0.25).astype(np.float32)
    bias = net.rng.normal(0, 0.1, classes).astype(np.float32)
    b.op("Gemm", x, b.weight("fc.weight", w), b.weight("fc.bias", bias), transB=1, out="logits")
    return b.build([float_input("input", ["N", 3, image, image])],
                   [float_input("logits", ["N", classes])], "tiny_cnn")
