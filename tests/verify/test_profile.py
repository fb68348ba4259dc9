"""`onnxvq profile`: trace parsing, FLOP counts against hand-computed shapes, the per-op-type sum
against ORT's measured total, the roofline probe, the plot and the CLI's JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from onnxvq.cli.app import app
from onnxvq.core.graph import save_model
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.verify.profile import node_flops, profile_model
from onnxvq.verify.profile_report import ProfileReport, profile, render_html, roofline_png
from onnxvq.verify.roofline import Roofline, measure_roofline

rng = np.random.default_rng(0)


def _const(name: str, shape: tuple[int, ...]):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _three_ops():
    """MatMul [2,5,7]·[7,3]; Conv [1,3,9,9] * [16,3,3,3] stride 2 pad 1 -> [1,16,5,5] (16
    output channels: ORT's NCHWc layout pads fewer to 16 and would run more FLOPs than the model
    has); Gemm [4,6]·[5,6]ᵀ (transB) -> [4,5]. Separate graph outputs, so ORT fuses nothing."""
    nodes = [helper.make_node("MatMul", ["a", "w1"], ["y1"], name="mm"),
             helper.make_node("Conv", ["x", "w2"], ["y2"], name="conv", strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Gemm", ["g", "w3", "b3"], ["y3"], name="gemm", transB=1)]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "three",
        [helper.make_tensor_value_info("a", f, [2, 5, 7]),
         helper.make_tensor_value_info("x", f, [1, 3, 9, 9]),
         helper.make_tensor_value_info("g", f, [4, 6])],
        [helper.make_tensor_value_info(n, f, None) for n in ("y1", "y2", "y3")],
        [_const("w1", (7, 3)), _const("w2", (16, 3, 3, 3)), _const("w3", (5, 6)),
         _const("b3", (5,))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_flops_of_gemm_like_nodes_are_exact():
    prof = profile_model(_three_ops(), runs=3, warmup=1)
    by_name = {n.op_type: n for n in prof.nodes}  # ORT renames the Conv (NCHWc layout)
    assert by_name["MatMul"].flops == 2 * (2 * 5) * 7 * 3
    assert by_name["Conv"].flops == 2 * (1 * 16 * 5 * 5) * (3 * 3 * 3)
    assert by_name["Gemm"].flops == 2 * 4 * 5 * 6
    # bytes: every input and output once, float32, the pre-packed weights included
    assert by_name["MatMul"].bytes == 4 * (2 * 5 * 7 + 7 * 3 + 2 * 5 * 3)
    assert by_name["Gemm"].bytes == 4 * (4 * 6 + 5 * 6 + 5 + 4 * 5)
    assert not any(n.int8 for n in prof.nodes)


def test_node_flops_int8_kernels():
    u8, i8, f = "uint8", "int8", "float"
    mm = node_flops("MatMulIntegerToFloat", [(u8, [8, 197, 384]), (i8, [384, 1152])],
                    [(f, [8, 197, 1152])])
    assert mm == 2 * 8 * 197 * 1152 * 384
    conv = node_flops("QLinearConv", [(u8, [1, 3, 224, 224]), (f, []), (u8, []),
                                      (i8, [384, 3, 16, 16])], [(u8, [1, 384, 14, 14])])
    assert conv == 2 * 384 * 14 * 14 * 3 * 16 * 16
    assert node_flops("Transpose", [(f, [2, 3])], [(f, [3, 2])]) == 0
    # DeiT-S's fused attention at batch 8: Q.K^T and A.V, 6 heads x 64 = 384 channels
    att = node_flops("QLinearAttention", [(u8, [8, 197, 1152])], [(u8, [8, 197, 384])])
    assert att == 2 * (2 * 8 * 6 * 197 * 197 * 64)
    assert node_flops("LogIntAttention", [(u8, [8, 197, 1152])], [(u8, [8, 197, 384])]) == att


@pytest.fixture(scope="module")
def vit_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "vit.onnx"
    save_model(build_tiny_vit(TinyViTConfig(depth=2, dim=192, heads=3, image=96, patch=8)), path)
    return path


def test_op_type_times_sum_to_measured_total(vit_path):
    prof = profile_model(vit_path, batch=8, runs=10, warmup=2)
    rows = prof.by_op_type()
    assert sum(r.nodes for r in rows) == len(prof.nodes)
    total = sum(r.ms for r in rows)
    assert total == pytest.approx(prof.total_ms, rel=0.10)
    matmuls = [r for r in rows if r.op_type in ("MatMul", "FusedMatMul", "Gemm")]
    assert matmuls and all(r.flops > 0 for r in matmuls)


def test_roofline_probe_and_ceilings():
    roof = measure_roofline(1, n=256, mib=32, repeats=2, cache=False)
    assert roof.fp32_gflops > 0.5 and roof.int8_gops > 0.5 and roof.bandwidth_gbs > 0.1
    fake = Roofline(100.0, 400.0, 10.0, 1)
    assert fake.ridge(False) == 10.0 and fake.ridge(True) == 40.0
    assert fake.ceiling(1.0, False) == 10.0 and fake.ceiling(1e3, True) == 400.0


def test_report_plot_html_and_json(vit_path):
    report = profile(vit_path, vit_path, batch=2, runs=3, warmup=1, threads=1)
    assert isinstance(report, ProfileReport) and report.ratio() > 0
    png = roofline_png(report)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    page = render_html(report)
    assert "data:image/png;base64," in page and "MatMul" in page
    d = report.to_dict()
    assert set(d["models"]) == {"fp32", "quant"}
    mm = next(r for r in d["models"]["fp32"]["op_types"] if r["op_type"] == "MatMul")
    assert mm["bound"] in ("compute", "memory") and mm["roof_fraction"] > 0


def test_cli_json_parses(vit_path, tmp_path):
    html = tmp_path / "p.html"
    result = CliRunner().invoke(app, ["profile", str(vit_path), "--runs", "2", "--json",
                                      "--threads", "1", "--html", str(html)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["models"]["fp32"]["total_ms"] > 0 and data["roofline"]["threads"] == 1
    assert html.read_text().startswith("<!doctype html>")


def test_cli_missing_file(tmp_path):
    result = CliRunner().invoke(app, ["profile", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 2 and "no such" in result.output
    assert "Traceback" not in result.output
