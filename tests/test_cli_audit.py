"""The CLI audit's warning class: a flag the run never reads is named on stderr, once, and the
run still succeeds; a flag a --recipe filled in is not mistaken for one the user set."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from onnxvq.cli.app import app
from onnxvq.core.graph import save_model
from onnxvq.models.tiny_vit import build_tiny_vit


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return save_model(build_tiny_vit(), tmp_path_factory.mktemp("audit") / "vit.onnx")


@pytest.mark.parametrize("flags, says", [
    (["--target", "trt", "--quantized-linear", "on"],
     "--quantized-linear on does nothing without int8 Linears for target ort"),
    (["--rank-by", "nuclear"], "--rank-by does nothing without --target-sqnr or --max-drop"),
    (["--percentile", "0.001"], "--percentile 0.001 does nothing with --method minmax"),
    (["--lis-base", "sqrt2"], "--lis-base sqrt2 does nothing without --lis or --lis-qdq"),
    (["--recipe", "repq"], None),  # fills lis_base=sqrt2 itself: no warning about it
])
def test_a_flag_that_did_nothing_is_named(vit, tmp_path, flags, says):
    out = tmp_path / "q.onnx"
    done = CliRunner().invoke(app, ["quantize", str(vit), "-o", str(out), "--samples", "4",
                                    "--batch-size", "4", *flags])
    assert done.exit_code == 0, done.output
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    if says is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and says in warnings[0], warnings
    assert out.is_file() and out.with_suffix(".json").is_file()
