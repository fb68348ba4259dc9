"""Calibration memory: range-only observers reduce inside the graph, so a run holds its working
set, not every observed tensor (measured as the peak RSS of collect(), ORT's arena included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxvq.calibrate import MinMaxObserver, budget, collect
from onnxvq.calibrate.budget import LIVE, calibration_batch

N, WIDTH, CHAIN = 8, 1 << 19, 12  # 8 x 2 MiB floats = 16 MiB per tensor, 12 of them observed
STATUS, CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _chain() -> onnx.ModelProto:
    nodes, prev = [], "x"
    for i in range(CHAIN):
        op = ("Relu", "Neg", "Sigmoid")[i % 3]
        nodes.append(helper.make_node(op, [prev], [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(helper.make_node("ReduceSum", [prev], ["y"], keepdims=0))
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


class _HeldMinMax(MinMaxObserver):
    range_only = False  # the same statistics from the whole tensor, exposed as an output


def _peak_mib(make_obs) -> tuple[float, dict]:
    data = [{"x": np.random.default_rng(i).standard_normal((N, WIDTH)).astype(np.float32)}
            for i in range(3)]
    names = [f"t{i}" for i in range(CHAIN)]

    def kib(field: str) -> int:
        return next(int(ln.split()[1]) for ln in STATUS.read_text().splitlines()
                    if ln.startswith(field + ":"))

    CLEAR.write_text("5")  # reset VmHWM to the current RSS
    base = kib("VmRSS")
    obs = collect(_chain(), names, data, make_obs)
    return (kib("VmHWM") - base) / 1024, obs


@pytest.mark.skipif(not CLEAR.exists() or not STATUS.exists(), reason="needs Linux /proc")
def test_in_graph_reduction_holds_a_working_set_not_every_tensor():
    try:
        CLEAR.write_text("5")
    except OSError:
        pytest.skip("/proc/self/clear_refs is not writable here")
    held, ref = _peak_mib(_HeldMinMax)
    lean, got = _peak_mib(MinMaxObserver)
    tensor_mib = N * WIDTH * 4 / 2**20
    assert held > CHAIN * tensor_mib * 0.9  # every observed tensor is an output at once
    assert lean < 5 * tensor_mib, (lean, held)
    for name, o in ref.items():
        assert got[name].range() == o.range()


def test_budget_counts_reduced_tensors_as_a_working_set(monkeypatch):
    model = _chain()
    names = [f"t{i}" for i in range(CHAIN)]
    per_tensor = WIDTH * 4  # bytes per sample
    monkeypatch.setattr(budget, "memory_budget", lambda: 64.0 * per_tensor)
    # held whole: 12 tensors x SAFETY 2 per sample -> 64 // 24 = 2 samples
    assert calibration_batch(model, 16, names) == 2
    # reduced in the graph: LIVE x the largest -> 64 // (2 * LIVE) samples
    assert calibration_batch(model, 16, [], names) == 64 // (2 * LIVE)
