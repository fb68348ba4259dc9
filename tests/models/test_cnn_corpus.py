"""The torchvision CNN corpus (ResNet-18, MobileNetV2, VGG16-BN): recognised with exact counts and
run by ONNX Runtime as int8 convolutions after quantization."""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxvq.api import inspect
from onnxvq.core.config import QuantConfig
from onnxvq.core.metrics import sqnr
from onnxvq.models.corpus import CNN_ENTRIES, CNN_EXPORTERS
from onnxvq.quantizer.run import quantize

PAIRS = [(n, e) for n in CNN_ENTRIES for e in CNN_EXPORTERS]
IDS = [f"{n}-{e}" for n, e in PAIRS]
_HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "torchvision"))


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.skipif(not _HAVE_TORCH, reason="needs torch and torchvision ([export] extra)")
@pytest.mark.parametrize("name", list(CNN_ENTRIES))
def test_counts_table_matches_the_torch_modules(name: str) -> None:
    import torch

    from onnxvq.models.export import build_module

    torch.manual_seed(0)
    module = build_module(CNN_ENTRIES[name])
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    counts = CNN_ENTRIES[name].counts
    assert len(convs) == counts.convs
    assert sum(m.groups > 1 and m.groups == m.in_channels for m in convs) == counts.depthwise
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules()) == counts.batchnorms
    assert sum(isinstance(m, torch.nn.Linear) for m in module.modules()) == counts.linears


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), PAIRS, ids=IDS)
def test_cnn_export_is_recognised(corpus_model, name: str, exporter: str) -> None:
    s = inspect(corpus_model(name, exporter)).structure
    expected = {**vars(CNN_ENTRIES[name].counts), "batchnorms": 0}  # all folded into Convs
    assert s.is_cnn and s.cnn.counts == expected


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), PAIRS, ids=IDS)
def test_cnn_export_runs_as_int8_convolutions(corpus_model, tmp_path, name: str,
                                             exporter: str) -> None:
    path = corpus_model(name, exporter)
    result = quantize(path, None, QuantConfig(calib_size=8, batch_size=4))
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    sess = ort.InferenceSession(result.model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    counts = CNN_ENTRIES[name].counts
    assert ops["QLinearConv"] == counts.convs and ops["Conv"] == 0
    assert ops["Relu"] == ops["Clip"] == 0  # fused into the QLinearConv/QLinearAdd outputs
    assert ops["QLinearAdd"] == counts.residual_adds and ops["QGemm"] >= 1
    image = CNN_ENTRIES[name].image
    x = np.random.default_rng(7).standard_normal((2, 3, image, image)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None,
                                                                                {"input": x})[0]
    got = sess.run(None, {"input": x})[0]
    db = sqnr(ref, got)
    assert db > 10, db  # 8 noise calibration images, random weights (MobileNetV2: 13 dB)
