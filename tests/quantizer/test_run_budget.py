"""One run, one graph: what a default quantize() of the tiny ViT costs in graph I/O.

Counted by wrapping the library entry points: graphsurgeon imports/exports, the ONNX checker,
ONNX shape inference and ONNX Runtime sessions. Two stages (canonical, quantization) may each
export and check once; the graph is imported once for the whole run.
"""

from __future__ import annotations

import collections

import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from onnxvq.core.config import QuantConfig
from onnxvq.core.pipeline import Pipeline
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes import pipelines
from onnxvq.quantizer.run import quantize

NOISE = dict(calib_size=16, batch_size=16)
STAGES = 2


@pytest.fixture(scope="module")
def tiny() -> onnx.ModelProto:
    return build_tiny_vit(TinyViTConfig())


@pytest.fixture
def counts(monkeypatch):
    seen: collections.Counter = collections.Counter()

    def wrap(owner, name: str, key: str) -> None:
        real = getattr(owner, name)

        def counted(*args, **kwargs):
            seen[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    wrap(gs, "import_onnx", "import")
    wrap(gs, "export_onnx", "export")
    wrap(onnx.checker, "check_model", "checker")
    wrap(onnx.shape_inference, "infer_shapes", "shape_inference")
    wrap(ort, "InferenceSession", "session")
    real_run = Pipeline.run_graph

    def run_graph(self, *args, **kwargs):
        if self in (pipelines.CANONICAL, pipelines.TENSORRT_CANONICAL):
            seen["canonicalise"] += 1
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "run_graph", run_graph)
    return seen


def test_default_quantize_imports_once_and_exports_once_per_stage(tiny, counts):
    quantize(tiny, None, QuantConfig(**NOISE))
    assert counts["import"] == 1
    assert counts["export"] == STAGES
    assert counts["checker"] == STAGES
    assert counts["canonicalise"] == 1
    # probe of fold-static-shapes, calibration run
    assert counts["session"] == 2
    # canonical entry + check, recognition, quantization check (the calibration outputs are
    # typed from the canonical model's value_info)
    assert counts["shape_inference"] == 4


def test_fully_quantized_trt_run_keeps_the_budget(tiny, counts):
    quantize(tiny, None, QuantConfig(target="trt", pts=True, lis=True, **NOISE))
    assert (counts["import"], counts["export"], counts["checker"]) == (1, STAGES, STAGES)
    assert counts["session"] == 3  # + the PTS error run


def test_validate_each_checks_after_every_pass(tiny, counts):
    quantize(tiny, None, QuantConfig(**NOISE), validate="each")
    passes = len(pipelines.CANONICAL.passes) + \
        len(pipelines.quantization_pipeline(QuantConfig(**NOISE)).passes)
    assert counts["checker"] == passes + STAGES
    assert counts["import"] == 1


def test_report_reuses_the_canonical_model(tiny, counts, tmp_path):
    from onnxvq.verify.report import write_report

    result = quantize(tiny, None, QuantConfig(**NOISE))
    write_report(tiny, result, None, tmp_path / "r.html", samples=4, batch_size=4)
    assert counts["canonicalise"] == 1
    assert counts["import"] == 1
    assert result.canonicalization is not None and result.canonical is not None


def test_inspect_and_sensitivity_canonicalise_on_one_graph(tiny, counts):
    from onnxvq.api import inspect
    from onnxvq.verify.sensitivity import canonical_structure

    inspect(tiny)
    assert (counts["import"], counts["export"], counts["checker"]) == (1, 1, 1)
    counts.clear()
    canonical_structure(tiny)
    assert (counts["import"], counts["export"], counts["canonicalise"]) == (1, 1, 1)


def test_public_quantize_adds_only_the_fidelity_gate(tiny, counts):
    import onnxvq

    result = onnxvq.quantize(tiny, None, QuantConfig(**NOISE))
    assert result.fidelity is not None
    assert (counts["import"], counts["export"], counts["checker"]) == (1, STAGES, STAGES)
    assert counts["session"] == 2 + 2  # the gate runs the FP32 and the quantized model once each
