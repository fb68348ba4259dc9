"""The Polygraphy extension: entry point registered, ORT sessions with onnxvq's library, the
`--pluginref` references (custom ops bit-exact, standard ops by the schema their form fits)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxvq.core.config import QuantConfig
from onnxvq.models.tiny_vit import build_tiny_vit
from onnxvq.plugins import native_available
from onnxvq.plugins.polygraphy_ext import _opset_for, get_arg_groups
from onnxvq.quantizer.run import quantize


def extension_installed() -> bool:
    """The entry point lives in the installed metadata: an editable install made before it was
    added needs `pip install --no-deps -e .` again (a fresh install, as CI does, has it)."""
    return any(p.name == "onnxvq" for p in metadata.entry_points(group="polygraphy.run.plugins"))


needs_extension = pytest.mark.skipif(
    not extension_installed(), reason="Polygraphy extension not in the installed metadata; "
    "re-run `pip install --no-deps -e .`")


@needs_extension
def test_entry_point_is_registered():
    points = metadata.entry_points(group="polygraphy.run.plugins")
    assert [p.value for p in points if p.name == "onnxvq"] == [
        "onnxvq.plugins.polygraphy_ext:get_arg_groups"]


def test_opset_chosen_by_the_form_of_the_node():
    assert _opset_for("ReduceMean", ("axes", "keepdims"), 1) == 17  # axes attribute: opset < 18
    assert _opset_for("ReduceMean", ("keepdims",), 2) == 21  # axes input: the newest schema
    assert _opset_for("ReduceSum", ("keepdims",), 2) == 21 and _opset_for("Clip", (), 3) == 21


@pytest.fixture(scope="module")
def fq_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("pg")
    # plain QDQ: Polygraphy's reference runner has no com.microsoft kernels (the ORT lowering's)
    result = quantize(build_tiny_vit(), None, QuantConfig(pts=True, lis=True, calib_size=8,
                                                          batch_size=8, ort_fusions=False))
    return result.save(root / "q.onnx"), result.model


def test_pluginref_runs_the_model_like_ort(fq_model):
    """In-process: Polygraphy's PluginRefRunner, with the extension's references, gives the
    ORT output of the fully quantized model (custom ops included)."""
    from polygraphy.backend.onnx import GsFromOnnx
    from polygraphy.backend.pluginref import PluginRefRunner

    from onnxvq.core.runtime import make_session, random_inputs

    _, model = fq_model
    get_arg_groups()
    ops = {n.op_type for n in model.graph.node}
    assert {"IntLayerNorm", "LogIntSoftmax", "LogIntMatMul", "QuantizeLinear"} <= ops
    sess = make_session(model)
    feeds = random_inputs(sess, batch=2, seed=4)
    with PluginRefRunner(GsFromOnnx(model)) as ref:
        got = ref.infer(feeds)
    want = sess.run(None, feeds)[0]
    np.testing.assert_allclose(got["logits"], want, atol=1e-4, rtol=1e-4)


@needs_extension
@pytest.mark.skipif(not native_available(), reason="native custom-op library not built")
def test_plain_polygraphy_onnxrt_loads_the_native_library(fq_model, tmp_path):
    """Without its local functions the model runs only if the session has onnxvq's kernels."""
    path, model = fq_model
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.functions[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    exe = shutil.which("polygraphy") or str(Path(sys.executable).parent / "polygraphy")
    done = subprocess.run([exe, "run", str(tmp_path / "bare.onnx"), "--onnxrt"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PASSED" in done.stdout + done.stderr
