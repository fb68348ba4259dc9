"""The native library's source stamp: a library built from other sources is never loaded.

Last session a libonnxvq_ort.so built before a source change segfaulted tests (a node the old
library did not know). build.sh now compiles the sources' hash into the library; a lookup that
finds another hash warns once and falls back to the ONNX local functions, and an explicit
ONNXVQ_ORT_LIBRARY that does not match is a NativeBuildError (exit 10 in the CLI).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from typer.testing import CliRunner

from onnxvq.cli.app import app
from onnxvq.core.errors import NativeBuildError
from onnxvq.core.graph import save_model
from onnxvq.core.runtime import make_session
from onnxvq.models.tiny_vit import build_tiny_vit
from onnxvq.plugins import native
from onnxvq.plugins.ops import make_int_layer_norm_node
from onnxvq.plugins.reference import int_layer_norm, layernorm_params

OTHER = "0123456789abcdef"


def _restamped(library: str, folder: Path, stamp: str | None) -> Path:
    """A copy of the built library carrying `stamp` instead (None: no stamp at all)."""
    data = Path(library).read_bytes()
    mark = b"onnxvq-source-stamp:" + native.source_stamp().encode()
    assert data.count(mark) == 1
    new = b"onnxvq-source-stamp:" + stamp.encode() if stamp else b"x" * len(mark)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / native.LIBRARY_NAME
    out.write_bytes(data.replace(mark, new))
    return out


def _layer_norm_model(functions: bool):
    rng = np.random.default_rng(0)
    c = 32
    p = layernorm_params(rng.normal(1, 0.4, c), rng.normal(0, 0.5, c), 0.01,
                         rng.integers(0, 4, c), 120, 0.03, 128, eps=1e-6)
    g = gs.Graph(opset=17)
    x = gs.Variable("x", np.uint8, [4, c])
    g.inputs, g.outputs = [x], [make_int_layer_norm_node(g, x, p, name="ln")]
    model = gs.export_onnx(g)
    model.ir_version = 10
    if not functions:
        del model.functions[:]
    q = rng.integers(0, 256, (4, c)).astype(np.uint8)
    return model, q, int_layer_norm(q, p.alpha, p.gamma, p.beta, **p.attributes())


def test_the_built_library_carries_the_stamp_of_these_sources(library):
    """build.sh's bash hash and source_stamp()'s Python one agree (else nothing would load)."""
    stamp = native.source_stamp()
    assert stamp is not None and len(stamp) == 16
    assert native.library_stamp(Path(library)) == stamp


def test_the_stamp_follows_content_not_mtimes(monkeypatch, tmp_path):
    """A checkout that rewrites a file unchanged keeps the stamp; one changed byte changes it."""
    copy = tmp_path / "ort"
    shutil.copytree(native.ORT_DIR / "src", copy / "src")
    for name in ("build.sh", "exports.map"):
        shutil.copy2(native.ORT_DIR / name, copy / name)
    monkeypatch.setattr(native, "ORT_DIR", copy)
    before = native.source_stamp()
    src = copy / "src" / "register.cc"
    src.write_bytes(src.read_bytes())  # new mtime, same bytes
    assert native.source_stamp() == before
    src.write_bytes(src.read_bytes() + b"// changed\n")
    assert native.source_stamp() != before
    (copy / "src" / "new_op.h").write_text("#pragma once\n")
    assert native.source_stamp() not in (before, None)


@pytest.mark.parametrize("stamp, says", [(OTHER, f"built from other sources (stamp {OTHER}"),
                                         (None, "has no source stamp")])
def test_a_mismatched_library_is_not_loaded_and_functions_run(library, monkeypatch, tmp_path,
                                                               caplog, stamp, says):
    monkeypatch.delenv("ONNXVQ_ORT_LIBRARY", raising=False)
    monkeypatch.delenv("ONNXVQ_NO_NATIVE", raising=False)
    monkeypatch.setenv("ONNXVQ_ORT_BUILD_DIR", str(tmp_path))
    _restamped(library, tmp_path, stamp)
    with caplog.at_level(logging.WARNING, logger="onnxvq.plugins.native"):
        assert native.ort_library_path(build=False) is None
        assert native.ort_library_path(build=False) is None
        assert not native.native_available()
        model, q, want = _layer_norm_model(functions=True)
        got = make_session(model).run(None, {"x": q})[0]
    np.testing.assert_array_equal(got, want)  # the local function ran
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and says in warnings[0], warnings  # once, one line
    assert "\n" not in warnings[0] and "plugins/ort/build.sh" in warnings[0]
    bare, _, _ = _layer_norm_model(functions=False)
    with pytest.raises(Exception, match="IntLayerNorm"):  # the library was really not registered
        make_session(bare)


def test_a_matching_library_is_loaded(library, monkeypatch, tmp_path):
    monkeypatch.delenv("ONNXVQ_ORT_LIBRARY", raising=False)
    monkeypatch.delenv("ONNXVQ_NO_NATIVE", raising=False)
    monkeypatch.setenv("ONNXVQ_ORT_BUILD_DIR", str(tmp_path))
    lib = _restamped(library, tmp_path, native.source_stamp())
    assert native.ort_library_path(build=False) == str(lib)
    bare, q, want = _layer_norm_model(functions=False)
    np.testing.assert_array_equal(make_session(bare).run(None, {"x": q})[0], want)


def test_an_explicit_mismatched_library_is_a_clear_error(library, monkeypatch, tmp_path):
    lib = _restamped(library, tmp_path / "old", OTHER)
    monkeypatch.delenv("ONNXVQ_NO_NATIVE", raising=False)
    monkeypatch.setenv("ONNXVQ_ORT_LIBRARY", str(lib))
    with pytest.raises(NativeBuildError, match=f"ONNXVQ_ORT_LIBRARY=.*stamp {OTHER}"):
        native.ort_library_path(build=False)
    with pytest.raises(NativeBuildError):  # sessions do not silently drop what was asked for
        make_session(_layer_norm_model(functions=True)[0])
    vit = save_model(build_tiny_vit(), tmp_path / "vit.onnx")
    before = vit.read_bytes()
    res = CliRunner().invoke(app, ["quantize", str(vit), "--samples", "4"])
    assert res.exit_code == NativeBuildError.exit_code, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ONNXVQ_ORT_LIBRARY="), res.output
    assert "Traceback" not in res.output
    assert vit.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "old", "vit.onnx"]
