"""Fixtures shared by the suite: the exported model corpus and the real data beside the repo."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
_SOURCE_PACKAGES = {"timm": "timm", "huggingface": "transformers", "torchvision": "torchvision",
                    "diffusers": "diffusers"}


@pytest.fixture
def no_block_model():
    """MatMul + Relu: valid ONNX with no transformer blocks in it."""
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.1] * 16)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` next to the repository (trained models, CIFAR-10); skips when absent."""
    path = (REPO_ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path}")
    return path


@pytest.fixture(scope="session")
def corpus_model() -> Callable[[str, str], Path]:
    """`corpus_model(name, exporter)` -> path of the exported ONNX, exporting once when missing.

    Skips when the [export] extra is not installed or the pair is known not to export.
    """
    from onnxvq.models.corpus import ExportUnavailable, ensure_export, entry

    cache: dict[tuple[str, str], Path | ExportUnavailable] = {}

    def get(name: str, exporter: str) -> Path:
        needed = ["torch", _SOURCE_PACKAGES[entry(name).source]]
        needed += ["onnxscript"] if exporter == "dynamo" else []
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            pytest.skip(f"exporting {name} needs {', '.join(missing)} (pip install onnxvq[export])")
        if (name, exporter) not in cache:
            try:
                cache[name, exporter] = ensure_export(name, exporter)
            except ExportUnavailable as exc:
                cache[name, exporter] = exc
        found = cache[name, exporter]
        if isinstance(found, ExportUnavailable):
            pytest.skip(str(found))
        return found

    return get


@pytest.fixture(scope="session")
def family_or_corpus(corpus_model) -> Callable[[str], Path]:
    """`f(name)` -> the ONNX of `models/families` entry `name`, else of the corpus entry `name`
    (TorchScript 17), exported once when missing."""
    def get(name: str) -> Path:
        from onnxvq.models.families import FAMILIES, ensure

        return ensure(FAMILIES[name]) if name in FAMILIES else corpus_model(name, "torchscript17")

    return get


@pytest.fixture(scope="session")
def unfused_fused_sqnr() -> Callable:
    """`f(fp32_path, plain, fused, pass_id)` -> (unfused dB, fused dB, apart dB): `plain` (a QDQ
    model) lowered by ORT_LOWERING without `pass_id`, and `fused` (lowered with it), each against
    the FP32 model on the same 4 random inputs, and the two lowerings against each other."""
    from onnxvq.core.metrics import sqnr
    from onnxvq.core.pipeline import Pipeline
    from onnxvq.core.runtime import make_session, random_inputs
    from onnxvq.passes.pipelines import ORT_LOWERING

    def measure(path: Path, plain, fused, pass_id: str) -> tuple[float, float, float]:
        unfused, _ = Pipeline(tuple(p for p in ORT_LOWERING.passes if p.id != pass_id)).run(
            plain, numeric="none")
        fp32 = make_session(str(path))
        feeds = random_inputs(fp32, batch=4, seed=11)
        ref = fp32.run(None, feeds)[0]
        a, b = (make_session(m).run(None, feeds)[0] for m in (unfused, fused))
        return sqnr(ref, a), sqnr(ref, b), sqnr(a, b)

    return measure
