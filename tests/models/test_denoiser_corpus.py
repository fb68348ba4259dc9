"""The diffusers denoisers of the corpus (tiny UNet2DModel and DiT, random weights): exported like
torch, recognised, quantized with time-step-aware calibration and compared over a DDIM run."""

from __future__ import annotations

import pytest

from onnxvq.api import inspect
from onnxvq.calibrate.denoiser import TrajectoryCalibration, find_roles
from onnxvq.core.config import QuantConfig
from onnxvq.core.graph import load_model
from onnxvq.models.corpus import DENOISER_ENTRIES, DENOISER_EXPORTERS, read_manifest
from onnxvq.quantizer.run import quantize
from onnxvq.verify.denoiser import compare_denoiser

PAIRS = [(n, e) for n in DENOISER_ENTRIES for e in DENOISER_EXPORTERS]
IDS = [f"{n}-{e}" for n, e in PAIRS]


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), PAIRS, ids=IDS)
def test_denoiser_exports_are_recognised(corpus_model, name: str, exporter: str) -> None:
    path = corpus_model(name, exporter)
    assert read_manifest(name, exporter)["max_abs_diff"] <= 1e-4
    counts = DENOISER_ENTRIES[name].counts
    roles = find_roles(load_model(path))
    assert (roles.class_label is not None) == (counts.classes is not None)
    s = inspect(path).structure
    if counts.blocks:  # DiT: one attention per block, five LayerNorms without affine
        assert len(s.blocks) == counts.blocks and len(s.attentions) == counts.blocks
        assert len(s.layernorms) == 2 * counts.blocks + 1
        # adaLN-Zero: every LayerNorm modulated, two gated branches per block, one conditioning
        # linear per block plus the final layer's
        assert s.adaln.to_dict() == {"modulated_norms": 2 * counts.blocks + 1,
                                     "gates": 2 * counts.blocks,
                                     "conditioning_linears": counts.blocks + 1}
    else:
        assert s.adaln is None


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), PAIRS, ids=IDS)
def test_denoiser_quantizes_and_samples_close_to_fp32(corpus_model, name: str,
                                                      exporter: str) -> None:
    path = corpus_model(name, exporter)
    classes = DENOISER_ENTRIES[name].counts.classes
    calib = TrajectoryCalibration(interval=4, per_step=4, classes=classes)
    result = quantize(path, calib, QuantConfig(batch_size=8))
    assert calib.collected == [(4, 800), (8, 600), (12, 400), (16, 200), (20, 0)]
    assert len(result.plan.weights) > 10 and not result.plan.skipped
    c = compare_denoiser(path, result.model, steps=10, samples=4, classes=classes)
    # the trajectories drift apart as the error accumulates (random weights): the first step is
    # the cleanest comparison of the noise predictions
    assert len(c.step_sqnr_db) == 10 and c.step_sqnr_db[0] > 12 and c.final_psnr_db > 8


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize("exporter", DENOISER_EXPORTERS)
def test_dit_pts_on_both_exports(corpus_model, exporter: str) -> None:
    """--pts on the DiT, TorchScript (opset 17) and dynamo (opset 20): every LayerNorm without
    affine becomes an IntLayerNorm whose local function imports the model's opset, the adaLN
    modulation (1 + scale, shift) stays float after it, the model passes the full ONNX check and
    samples as close to FP32 as plain W8/A8 does."""
    import onnx

    path = corpus_model("diffusers_dit_tiny", exporter)
    counts = DENOISER_ENTRIES["diffusers_dit_tiny"].counts
    calib = TrajectoryCalibration(interval=4, per_step=4, classes=counts.classes)
    result = quantize(path, calib, QuantConfig(batch_size=8, pts=True))
    model = result.model
    onnx.checker.check_model(model, full_check=True)
    opset = next(o.version for o in model.opset_import if o.domain == "")
    assert opset == (20 if exporter == "dynamo" else 17)
    assert [f.name for f in model.functions if f.name == "IntLayerNorm"]
    assert all(o.version == opset for f in model.functions for o in f.opset_import
               if o.domain == "")
    # (one after a residual Add is an AddIntLayerNorm, its input quantizer fused in)
    lns = [n for n in model.graph.node if n.op_type in ("IntLayerNorm", "AddIntLayerNorm")]
    assert len(lns) == 2 * counts.blocks + 1
    consumers = {i: n.op_type for n in model.graph.node for i in n.input}
    # each IntLayerNorm's float output feeds the modulation's Mul (x * (1 + scale))
    assert all(consumers.get(n.output[0]) in ("DequantizeLinear", "Mul") for n in lns)
    c = compare_denoiser(path, model, steps=10, samples=4, classes=counts.classes)
    assert c.step_sqnr_db[0] > 12 and c.final_psnr_db > 8
