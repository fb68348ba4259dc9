"""What canonicalisation needs first: an IR version ORT reads (refused clearly above), symbolic
image dims folded at the calibration shape and kept symbolic on the output; PTS refused where it
would erase tokens; --pts/--lis that apply nowhere refused by name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxvq
from onnxvq.calibrate.preprocess import Preprocess
from onnxvq.calibrate.rows import PtsRowObserver, pooled_tokens
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import UnsupportedModelError
from onnxvq.core.runtime import make_session
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.prepare import newest_ort_ir

NOISE = dict(calib_size=6, batch_size=3)


@pytest.fixture
def tiny() -> onnx.ModelProto:
    return build_tiny_vit(TinyViTConfig(depth=2))


def test_an_ir_version_ort_reads_is_lowered_for_folding(tiny):
    tiny.ir_version = newest_ort_ir()
    result = onnxvq.inspect(tiny)
    assert result.structure.counts["blocks"] == 2
    assert result.model.ir_version <= 10


def test_an_ir_version_beyond_ort_is_refused_in_one_line(tiny):
    tiny.ir_version = 99
    for run in (onnxvq.inspect, lambda m: onnxvq.quantize(m, None, QuantConfig(**NOISE))):
        with pytest.raises(UnsupportedModelError, match="IR version 99 is newer than onnxrun"):
            run(tiny)


def _symbolic_hw(model: onnx.ModelProto) -> onnx.ModelProto:
    for axis, name in ((2, "height"), (3, "width")):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    return model


def test_dynamic_height_width_is_folded_at_the_calibration_shape(tiny):
    model = _symbolic_hw(tiny)
    # Before: canonicalisation probed 1x3x1x1 noise and ORT's Conv error came out raw.
    result = onnxvq.quantize(model, None, QuantConfig(**NOISE),
                             preprocess=Preprocess(size=32, crop=32))
    assert result.structure.counts["blocks"] == 2
    dims = result.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["height", "width"]
    assert result.fidelity["outputs"][0]["sqnr_db"] > 15
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert make_session(result.model).run(None, {"input": x})[0].shape == (2, 10)


def test_pts_refuses_a_layernorm_whose_tokens_it_would_erase():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 10, 16)).astype(np.float32) * 3
    obs = PtsRowObserver("t", 6 / 255, 128)
    obs.update(x)
    assert obs.thin_rows() is None
    x[:, 0] = 1e-6 * rng.standard_normal((2, 16))  # a class token at timm's init scale
    obs = PtsRowObserver("t", 6 / 255, 128)
    obs.update(x)
    assert "IntLayerNorm would output beta" in obs.thin_rows()


def test_pts_refuses_a_final_norm_whose_pooled_token_it_would_blur():
    """DeiT-III / CaiT: the head reads only the class token after the final norm; at a few of
    the layer-wise steps (above the one-step rule) it keeps ~10 dB through the input codes."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 10, 16)).astype(np.float32) * 3
    x[:, 0] = 0.05 * rng.standard_normal((4, 16))  # the class token, a few steps of 18/255 wide

    def observed(pooled: tuple[int, ...]) -> PtsRowObserver:
        obs = PtsRowObserver("t", 18 / 255, 128, pooled=pooled)
        obs.update(x)
        return obs

    assert observed(()).thin_rows() is None  # every token spans over one step
    assert observed((1,)).thin_rows() is None  # a patch token pooled: kept
    assert observed((1,)).pooled_sqnr_db() > 30
    assert observed((0,)).pooled_sqnr_db() < 20
    assert "token 0, which the head reads, keeps only" in observed((0,)).thin_rows()


def test_pooled_tokens_are_the_final_norms_gathers():
    """The tiny ViT's final norm feeds the head through x[:, 0]; block norms feed linears."""
    model = build_tiny_vit(TinyViTConfig())
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert [pooled_tokens(model, n.output[0]) for n in norms] == [()] * (len(norms) - 1) + [(0,)]


def test_integer_flags_that_apply_nowhere_are_refused_by_name(caplog):
    from onnxvq.models.tiny_cnn import build_tiny_cnn

    cnn = build_tiny_cnn()  # no LayerNorm, no attention: before, written as plain W8/A8
    with pytest.raises(UnsupportedModelError, match="--pts cannot apply: the model has no "
                       "LayerNormalization.*--lis cannot apply"):
        onnxvq.quantize(cnn, None, QuantConfig(pts=True, lis=True, **NOISE))
    assert "did nothing" not in caplog.text  # the error carries the reasons, once
    with pytest.raises(UnsupportedModelError, match="--pts cannot apply"):  # gate off: still
        onnxvq.quantize(cnn, None, QuantConfig(pts=True, **NOISE), gate=False)


@pytest.mark.parametrize("gate", [True, False])
def test_rewrite_flags_that_did_nothing_warn_by_name(caplog, gate):
    """--reparam, --reparam-mlp and --lis-qdq on a CNN wrote plain W8/A8 without a word."""
    from onnxvq.models.tiny_cnn import build_tiny_cnn

    cfg = QuantConfig(reparam=True, reparam_mlp=True, lis_qdq=True, **NOISE)
    with caplog.at_level("WARNING", logger="onnxvq.quantizer.flags"):
        result = onnxvq.quantize(build_tiny_cnn(), None, cfg, gate=gate)
    warned = [r.getMessage() for r in caplog.records if "did nothing" in r.getMessage()]
    assert sorted(w.split(" did nothing")[0] for w in warned) == [
        "--lis-qdq", "--reparam", "--reparam-mlp"]
    assert any("no LayerNorm output feeding a linear" in w for w in warned)
    assert result.model.graph.node  # written: these flags only warn
    assert bool(result.fidelity) is gate  # the gate off leaves an empty report, not None


def test_no_head_on_a_headless_backbone_warns(caplog):
    """A backbone cut before its classifier: --no-head keeps nothing float, and says so."""
    vit = build_tiny_vit(TinyViTConfig())
    head = next(n for n in vit.graph.node if n.op_type == "Gemm")
    shaped = onnx.shape_inference.infer_shapes(vit)
    backbone = onnx.utils.Extractor(shaped).extract_model([vit.graph.input[0].name],
                                                          [head.input[0]])
    with caplog.at_level("WARNING", logger="onnxvq.quantizer.flags"):
        onnxvq.quantize(backbone, None, QuantConfig(quantize_head=False, **NOISE))
    assert "--no-head did nothing: no classifier head recognised" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="onnxvq.quantizer.flags"):
        onnxvq.quantize(vit, None, QuantConfig(quantize_head=False, **NOISE))
    assert "--no-head" not in caplog.text


def test_rewrite_flags_that_applied_do_not_warn(caplog):
    cfg = QuantConfig(reparam=True, reparam_mlp=True, lis_qdq=True, **NOISE)
    with caplog.at_level("WARNING", logger="onnxvq.quantizer.flags"):
        onnxvq.quantize(build_tiny_vit(TinyViTConfig()), None, cfg)
    assert "did nothing" not in caplog.text
