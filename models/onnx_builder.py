"""A minimal ONNX graph builder: numpy constants in, node outputs as tensor names out.

Builders return the names of their outputs so calls chain (`b.op("Relu", b.op("Add", x, y))`).
Names are numbered per op type (`MatMul_3`), the way the TorchScript exporter names nodes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxvq.core.external import external_ref


class ExternalWeights:
    """Writes weights straight to one external data file as they are made, so a model far over
    protobuf's 2 GB limit is built with one weight in memory at a time beyond the weights dict
    (the initializers only point into the file). Use as a context manager around the build."""

    def __init__(self, path: str | Path, *, threshold: int = 1024):
        self.path = Path(path)
        self.threshold = threshold
        self._file: BinaryIO | None = None

    def __enter__(self) -> ExternalWeights:
        self._file = open(self.path, "wb")
        return self

    def __exit__(self, *exc) -> None:
        assert self._file is not None
        self._file.close()

    def tensor(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        array = np.asarray(array, order="C")  # (ascontiguousarray makes scalars 1-D)
        if array.nbytes < self.threshold or self._file is None:
            return numpy_helper.from_array(array, name)
        offset = self._file.tell()
        self._file.write(memoryview(array).cast("B"))
        return external_ref(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape,
                            self.path.name, offset, array.nbytes)


class GraphBuilder:
    def __init__(self, opset: int, *, external: ExternalWeights | None = None):
        self.opset = opset
        self.external = external
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: Counter[str] = Counter()
        self._const_cache: dict[tuple, str] = {}

    def fresh(self, stem: str) -> str:
        self._counts[stem] += 1
        return f"{stem}_{self._counts[stem]}"

    def weight(self, name: str, array: np.ndarray) -> str:
        """A named initializer (model parameters keep their module-path names)."""
        if self.external is not None:
            self.initializers.append(self.external.tensor(name, array))
        else:
            self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def const(self, value: float | int | list | np.ndarray, dtype: type = np.float32) -> str:
        """An anonymous constant initializer; identical constants are shared, as exporters do."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._const_cache:
            self._const_cache[key] = self.weight(self.fresh("onnx::Constant"), array)
        return self._const_cache[key]

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        """Append one single-output node; `out` names its output (graph outputs need a name)."""
        return self.op_multi(op_type, *inputs, outputs=1, names=[out] if out else None, **attrs)[0]

    def op_multi(self, op_type: str, *inputs: str, outputs: int,
                 names: list[str] | None = None, **attrs) -> list[str]:
        node_name = self.fresh(op_type)
        names = names or [f"{node_name}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attrs))
        return names

    def reduce_mean(self, x: str, axes: list[int], keepdims: int = 1) -> str:
        # ReduceMean moved `axes` from an attribute to an input in opset 18.
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.const(axes, np.int64), keepdims=keepdims)
        return self.op("ReduceMean", x, axes=axes, keepdims=keepdims)

    def build(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="onnxvq.models")
        # onnx >= 1.23 stamps IR 14, which onnxruntime refuses; use the lowest the opset allows.
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model


def float_input(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
