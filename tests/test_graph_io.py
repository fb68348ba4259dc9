"""Model I/O: external data round trips, IR clamping, atomic writes."""

from __future__ import annotations

import numpy as np
import onnx

from onnxvq.api import inspect
from onnxvq.core.graph import load_model, save_model
from onnxvq.core.runtime import make_session, random_inputs
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit


def test_external_data_round_trip(tmp_path):
    model = build_tiny_vit(TinyViTConfig(depth=2))
    path = save_model(model, tmp_path / "big.onnx", external_data=True)
    assert (tmp_path / "big.onnx.data").stat().st_size > 100_000
    assert path.stat().st_size < 50_000  # the graph file holds no weights
    loaded = load_model(path)
    feeds = random_inputs(make_session(model), batch=2)
    np.testing.assert_array_equal(make_session(model).run(None, feeds)[0],
                                  make_session(loaded).run(None, feeds)[0])
    assert inspect(path).structure.counts["blocks"] == 2


def test_ir_version_is_clamped_for_onnxruntime(tmp_path):
    model = build_tiny_vit()
    model.ir_version = 14  # what onnx 1.23's make_model writes; onnxruntime 1.31 refuses it
    path = save_model(model, tmp_path / "m.onnx")
    assert onnx.load(str(path)).ir_version <= 10
    make_session(load_model(path))


def test_save_leaves_no_temporary_files(tmp_path):
    save_model(build_tiny_vit(), tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_compatible_ir_leaves_the_callers_model_alone(tmp_path):
    """compatible_ir (used by every session, save and shape inference) once lowered the IR of the
    model it was given in place: the caller's proto changed under it."""
    from onnxvq.core.graph import compatible_ir, infer_shapes_into, to_graph

    model = build_tiny_vit(TinyViTConfig())
    model.ir_version = 11
    before = model.SerializeToString()
    lowered = compatible_ir(model)
    assert lowered.ir_version == 10 and lowered is not model
    make_session(model)
    save_model(model, tmp_path / "m.onnx")
    assert infer_shapes_into(to_graph(model), model)
    assert model.ir_version == 11 and model.SerializeToString() == before
    model.ir_version = 10
    assert compatible_ir(model) is model  # nothing to lower: no copy
