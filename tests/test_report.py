"""report: one self-contained HTML file whose embedded PNG plots are real pictures."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from onnxvq.core.config import QuantConfig
from onnxvq.models.tiny_vit import build_tiny_vit
from onnxvq.quantizer.run import quantize
from onnxvq.verify import report_plots
from onnxvq.verify.report import write_report


def embedded_pngs(html: str) -> list[np.ndarray]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("L")) for b in found]


def check_plots(html: str, count: int) -> None:
    images = embedded_pngs(html)
    assert len(images) == count
    for img in images:
        assert img.shape[0] >= 300 and img.shape[1] >= 800
        assert img.std() > 20  # not blank: bars, text and axes on white
        assert (img < 128).mean() > 0.01


def test_report_for_tiny_vit(tmp_path):
    fp32 = build_tiny_vit()
    result = quantize(fp32, None, QuantConfig(calib_size=16, batch_size=8))
    path = write_report(fp32, result, None, tmp_path / "sub" / "r.html", samples=8)
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    check_plots(html, 3)
    for title in ("Per-layer SQNR", "LayerNorm input ranges", "Post-Softmax", "Settings"):
        assert title in html
    tensor, qp = next(iter(result.activation_qparams.items()))
    assert f"<td>{tensor}</td>" in html and f"{qp.scale:.6g}" in html
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, no leftovers


def test_report_from_saved_model_and_sidecar_only(tmp_path):
    fp32 = build_tiny_vit()
    result = quantize(fp32, None, QuantConfig(calib_size=8, batch_size=8))
    q = result.save(tmp_path / "q.onnx")
    html = write_report(fp32, q, None, tmp_path / "a.html", samples=4).read_text()
    check_plots(html, 3)
    html = write_report(fp32, result.sidecar(), None, tmp_path / "b.html", samples=4).read_text()
    check_plots(html, 2)
    assert "No quantized model was given" in html


def test_log2_beats_uniform_on_small_probabilities():
    p = np.array([0.5, 0.25, 0.01, 0.002, 1e-6])
    assert report_plots.quantize_uniform(p).tolist()[2:] == [0.0, 0.0, 0.0]
    assert report_plots.quantize_log2(p).tolist() == [0.5, 0.25, 2.0**-7, 2.0**-9, 0.0]
    assert len(report_plots.log2_levels(4)) == 17 and report_plots.uniform_levels(4)[1] == 1 / 15


@pytest.mark.realdata
def test_report_for_shared_vit(shared_data, tmp_path):
    from onnxvq.calibrate import resolve_preprocess

    prep = resolve_preprocess("cifar10-vit")
    calib = shared_data / "cifar10" / "calib"
    result = quantize(shared_data / "models" / "vit_cifar10.onnx", calib,
                      QuantConfig(calib_size=32), preprocess=prep)
    path = write_report(shared_data / "models" / "vit_cifar10.onnx", result, calib,
                        tmp_path / "vit.html", preprocess=prep, samples=16)
    html = path.read_text()
    check_plots(html, 3)
    assert "/transformer/layers.3/self_attn/Softmax_output_0" in html
    assert html.count("<tr>") > 50 + 26  # 50 activation and 26 weight scale rows at least
