"""The command line: bad input gives one clear line and a non-zero exit code, never a traceback."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from onnxvq.cli.app import app
from onnxvq.core.graph import save_model
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert text in result.output


def test_missing_file(tmp_path):
    assert_clean_error(run("inspect", tmp_path / "nope.onnx"), 2, "no such file")


def test_truncated_model(tmp_path):
    full = save_model(build_tiny_vit(), tmp_path / "vit.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(full[: len(full) // 3])
    assert_clean_error(run("inspect", cut), 3, "not a readable ONNX model")


def test_not_onnx(tmp_path):
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("this is not a model\n")
    assert_clean_error(run("inspect", bogus), 3, "not a readable ONNX model")


def test_unsupported_opset(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    path = save_model(model, tmp_path / "old.onnx")
    assert_clean_error(run("inspect", path), 4, "opset 11 is not supported")


def test_no_transformer_blocks_lists_what_it_found(tmp_path, no_block_model):
    model = no_block_model
    result = run("inspect", save_model(model, tmp_path / "mlp.onnx"))
    assert_clean_error(result, 4, "no transformer blocks found")
    assert "Relu" in result.output  # what it found is still listed


def test_inspect_json(tmp_path):
    cfg = TinyViTConfig(depth=3)
    result = run("inspect", save_model(build_tiny_vit(cfg), tmp_path / "v.onnx"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["summary"]
    assert (summary["blocks"], summary["layernorms"], summary["residual_adds"]) == (3, 7, 6)


def test_quantize_writes_model_and_sidecar_and_nothing_else(tmp_path):
    src = save_model(build_tiny_vit(TinyViTConfig(depth=2)), tmp_path / "in" / "v.onnx")
    out = tmp_path / "out" / "v.int8.onnx"
    result = run("quantize", src, "-o", out, "--calib-size", "8", "--batch-size", "4",
                 "--method", "percentile")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["v.int8.json", "v.int8.onnx"]
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["config"]["method"] == "percentile"
    assert side["calibration"]["source"] == "gaussian-noise"


def test_quantize_bad_calibration_folder_leaves_nothing(tmp_path):
    src = save_model(build_tiny_vit(), tmp_path / "v.onnx")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "q" / "v.int8.onnx"
    result = run("quantize", src, "-o", out, "--calib", tmp_path / "empty")
    assert_clean_error(result, 5, "empty")
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("flag,value,text", [("--method", "magic", "'magic' is not one of"),
                                             ("--target", "tpu", "'tpu' is not one of"),
                                             ("--preset", "coco", "'coco' is not one of"),
                                             ("--w-bits", "9", "w-bits must be between"),
                                             ("--lis-base", "3", "unknown lis_base '3'")])
def test_quantize_rejects_bad_options(tmp_path, flag, value, text):
    src = save_model(build_tiny_vit(), tmp_path / "v.onnx")
    assert_clean_error(run("quantize", src, flag, value), 2, text)


def test_build_engine_without_tensorrt_says_why(tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed: this test covers machines without it")
    except ImportError:
        pass
    path = save_model(build_tiny_vit(), tmp_path / "v.onnx")
    assert_clean_error(run("build-engine", path), 8, "tensorrt package is not importable")


def test_lis_base_sqrt2_is_recorded_and_warns_without_lis(tmp_path):
    src = save_model(build_tiny_vit(TinyViTConfig(depth=2)), tmp_path / "v.onnx")
    out = tmp_path / "q.onnx"
    common = ("--calib-size", "8", "--batch-size", "4", "--lis-base", "sqrt2")
    result = run("quantize", src, "-o", out, "--lis", *common)
    assert result.exit_code == 0, result.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["config"]["lis_base"] == "sqrt2"
    steps = {n.op_type: [a.i for a in n.attribute if a.name == "octave_steps"]
             for n in onnx.load(out).graph.node if n.op_type.startswith("LogInt")}
    assert steps == {"LogIntAttention": [2]}  # LogIntSoftmax + LogIntMatMul, fused (target ort)
    plain = run("quantize", src, "-o", tmp_path / "p.onnx", *common)
    assert plain.exit_code == 0 and "--lis-base sqrt2 does nothing without --lis" in plain.output
