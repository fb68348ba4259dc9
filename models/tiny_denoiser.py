"""A tiny class-conditional noise-prediction network in ONNX, for fast tests (no torch).

    sample [N,2,H,W] -> Conv 3×3 -> h1 ------------------------------.
    timestep [N] (int64) -> t/1000 · w_t  \\                           |
    class_labels [N] -> Gather(table)      +-> Relu -> Conv 3×3 -> h2 -> Concat(h2, h1·skip_gain)
                                                                     -> Conv 1×1 -> noise_pred

The Concat joins a UNet-style shortcut (h1) to the deep branch (h2); `skip_gain` scales the
shortcut so that the two halves' ranges differ by that factor, as Q-Diffusion observes in UNets
(up to 200×), and divides the output Conv's weights on those channels by it, so the function is
the same for every gain. Activations depend on the time step through the embedding.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxvq.models.onnx_builder import GraphBuilder, float_input


def build_tiny_denoiser(seed: int = 0, channels: int = 2, width: int = 8, image: int = 4,
                        classes: int = 4, skip_gain: float = 1.0,
                        opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset)

    def conv(x: str, cin: int, cout: int, k: int, name: str, gain: np.ndarray | None = None,
             ) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        if gain is not None:  # per input channel
            w = (w / gain.reshape(1, -1, 1, 1)).astype(np.float32)
        bias = rng.normal(0, 0.05, cout).astype(np.float32)
        return b.op("Conv", x, b.weight(f"{name}.weight", w), b.weight(f"{name}.bias", bias),
                    kernel_shape=[k, k], pads=[k // 2] * 4)

    h1 = conv("sample", channels, width, 3, "conv_in")
    t = b.op("Div", b.op("Cast", "timestep", to=TensorProto.FLOAT), b.const(1000.0))
    w_t = rng.standard_normal((1, width)).astype(np.float32)
    t_emb = b.op("MatMul", b.op("Unsqueeze", t, b.const([1], np.int64)), b.weight("time.w", w_t))
    table = rng.standard_normal((classes, width)).astype(np.float32)
    c_emb = b.op("Gather", b.weight("class.table", table), "class_labels", axis=0)
    emb = b.op("Reshape", b.op("Add", t_emb, c_emb), b.const([-1, width, 1, 1], np.int64))
    h2 = conv(b.op("Relu", b.op("Add", h1, emb)), width, width, 3, "conv_mid")
    skip = b.op("Mul", h1, b.const(skip_gain)) if skip_gain != 1.0 else h1
    cat = b.op("Concat", h2, skip, axis=1)
    gains = np.concatenate([np.ones(width), np.full(width, skip_gain)])
    out = conv(cat, 2 * width, channels, 1, "conv_out", gains)
    b.op("Identity", out, out="noise_pred")
    inputs = [float_input("sample", ["N", channels, image, image]),
              helper.make_tensor_value_info("timestep", TensorProto.INT64, ["N"]),
              helper.make_tensor_value_info("class_labels", TensorProto.INT64, ["N"])]
    return b.build(inputs, [float_input("noise_pred", ["N", channels, image, image])],
                   "tiny_denoiser")
