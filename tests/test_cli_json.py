"""`--json` on every command: stdout holds one JSON document and nothing else (logs, progress and
Polygraphy's `[W]` lines go to stderr)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from onnxvq.cli.app import app
from onnxvq.core.graph import save_model
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit

runner = CliRunner()


def run_json(*args):
    done = runner.invoke(app, [str(a) for a in args] + ["--json"])
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert list(out)[0] == "ok" and out["ok"] is True
    return out, done.stderr


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("json")
    fp32 = save_model(build_tiny_vit(TinyViTConfig(depth=2)), root / "v.onnx")
    # a real process, so that logging goes where the CLI sends it (pytest captures it otherwise)
    done = subprocess.run([sys.executable, "-c", "from onnxvq.cli import app; app()", "quantize",
                           str(fp32), "-o", str(root / "q.onnx"), "--samples", "8",
                           "--batch-size", "4", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert "NO CALIBRATION DATA" in done.stderr  # the warning went to stderr, not into the JSON
    assert out["model"] == str(root / "q.onnx") and out["config"]["calib_size"] == 8
    # every refusal with its reason, as in the sidecar (the tiny ViT's scale already one Mul)
    assert out["refused"] == json.loads((root / "q.json").read_text())["refused"]
    assert [r["reason"] for r in out["refused"]] == ["already canonical"] * 2
    return fp32, root / "q.onnx"


@pytest.mark.parametrize("command", ["inspect", "compare", "sensitivity", "sensitivity-blocks",
                                     "report", "profile"])
def test_every_command_prints_parseable_json(pair, tmp_path, command):
    fp32, q = pair
    args = {"inspect": ["inspect", fp32],
            "compare": ["compare", fp32, q, "--samples", "4", "--sqnr-min", "10"],
            "sensitivity": ["sensitivity", fp32, q, "--samples", "4"],
            "sensitivity-blocks": ["sensitivity", fp32, q, "--samples", "4", "--blocks"],
            "report": ["report", fp32, q, "--samples", "4", "-o", tmp_path / "r.html"],
            "profile": ["profile", fp32, q, "--runs", "2"]}[command]
    out, _ = run_json(*args)
    key = {"inspect": "summary", "compare": "outputs", "sensitivity": "rows",
           "sensitivity-blocks": "rows", "report": "report", "profile": "models"}[command]
    assert out[key]
    if command == "sensitivity-blocks":
        assert [r["unit"] for r in out["rows"]].count("rest") == 1 and len(out["rows"]) == 3


def test_eval_json(tmp_path):
    import numpy as np
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 99, np.uint8)).save(tmp_path / "img" / cls / "0.png")
    model = save_model(build_tiny_vit(TinyViTConfig(classes=2)), tmp_path / "v.onnx")
    out, _ = run_json("eval", model, "--data", tmp_path / "img", "--preset", "cifar10")
    assert out["images"] == 2 and out["classes"] == 2 and out["top1"] == 0.5


def test_polygraphy_warnings_stay_off_stdout(tmp_path, no_block_model):
    """A ReLU output has zeros: Polygraphy's relative-error check warns "Some values are 0"."""
    path = save_model(no_block_model, tmp_path / "relu.onnx")
    done = runner.invoke(app, ["compare", str(path), str(path), "--samples", "4", "--atol",
                               "0.1", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["passed"] is True
    assert "[W]" in done.stderr and "Some values are 0" in done.stderr


def run_failing(code: int, kind: str, *args) -> dict:
    """A failing --json run: one JSON document on stdout saying what failed, the same exit code,
    the one-line message still on stderr."""
    done = runner.invoke(app, [str(a) for a in args] + ["--json"])
    assert done.exit_code == code, done.output
    out = json.loads(done.stdout)
    assert out["ok"] is False and out["error"]["code"] == code and out["error"]["kind"] == kind
    assert out["error"]["message"] and list(out)[:2] == ["ok", "error"]
    if code != 1:  # a check that ran and failed prints its table/document, not an error line
        assert "error" in done.stderr.lower() or "usage" in done.stderr.lower()
    return out


def test_a_missing_file_is_a_json_usage_error(tmp_path):
    out = run_failing(2, "UsageError", "compare", tmp_path / "a.onnx", tmp_path / "b.onnx")
    assert "no such file" in out["error"]["message"]


def test_a_bad_choice_typer_refuses_is_a_json_usage_error(pair):
    """typer's own parsing errors come before the command reads --json: the group notes it."""
    out = run_failing(2, "UsageError", "quantize", pair[0], "--method", "nope")
    assert "'nope'" in out["error"]["message"]


def test_the_gate_refusing_prints_its_report(pair, tmp_path):
    out = run_failing(7, "FidelityError", "quantize", pair[0], "-o", tmp_path / "q.onnx",
                      "--samples", "8", "--fail-below", "200")
    assert "failed the fidelity gate" in out["error"]["message"]
    assert out["fidelity"]["threshold_db"] == 200 and out["fidelity"]["outputs"][0]["problem"]
    assert not (tmp_path / "q.onnx").exists()


def test_compare_failing_its_check_prints_the_comparison(pair):
    fp32, q = pair
    out = run_failing(1, "CheckFailed", "compare", fp32, q, "--samples", "4", "--sqnr-min", "200")
    assert out["passed"] is False and out["outputs"][0]["passed"] is False


@pytest.mark.parametrize("command", ["inspect", "quantize", "eval", "sensitivity", "report",
                                     "profile", "build-engine"])
def test_every_command_prints_json_when_the_model_is_not_onnx(tmp_path, command):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    args = {"inspect": [bad], "quantize": [bad, "-o", tmp_path / "q.onnx"],
            "eval": [bad, tmp_path], "sensitivity": [bad, bad], "report": [bad, bad],
            "profile": [bad], "build-engine": [bad]}[command]
    done = runner.invoke(app, [command, *map(str, args), "--json"])
    out = json.loads(done.stdout)
    assert done.exit_code in (2, 3, 5, 8) and out["ok"] is False, done.output
    assert out["error"]["code"] == done.exit_code


def test_inspect_without_blocks_prints_one_document_with_the_inspection(tmp_path,
                                                                       no_block_model):
    path = save_model(no_block_model, tmp_path / "relu.onnx")
    out = run_failing(4, "UnsupportedModelError", "inspect", path)
    assert "no transformer blocks" in out["error"]["message"] and out["summary"]["blocks"] == 0


@pytest.mark.slow
def test_demo_json(tmp_path):
    out, _ = run_json("demo", "-o", tmp_path)
    assert out["fidelity"]["samples"] == 32 and out["bytes"]["int8"] < out["bytes"]["fp32"]


def test_a_pass_printing_on_stdout_lands_on_stderr(capsys):
    """graphsurgeon's logger prints its warnings on stdout (fold_constants' "foldable nodes that
    produce large outputs" on timm's vit_small_r26_s32_224, whose ResNet stem standardises its
    conv weights: `inspect --json` did not parse, session 8's sweep). A pass's stdout is stderr."""
    import onnx_graphsurgeon as gs

    from onnxvq.core.pipeline import Pass, PassResult, Pipeline

    class Chatty(Pass):
        id = "chatty"

        def run(self, graph: gs.Graph, ctx) -> PassResult:
            print("[W] third-party chatter")
            return PassResult(self.id)

    Pipeline((Chatty(),)).run(build_tiny_vit(TinyViTConfig(depth=1)), validate="none",
                              numeric="none")
    out = capsys.readouterr()
    assert out.out == "" and "[W] third-party chatter" in out.err


def test_json_parses_with_a_large_folded_weight(tmp_path):
    """A 1.3 MiB weight computed in the graph (the ResNet-stem ViT's case): one JSON document."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = build_tiny_vit(TinyViTConfig(depth=1, classes=10))
    g = model.graph
    logits = g.output[0].name
    g.initializer.extend([numpy_helper.from_array(np.full((10, 32768), 0.5, np.float32), "w"),
                          numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    g.node.extend([helper.make_node("Mul", ["w", "two"], ["w2"]),
                   helper.make_node("MatMul", [logits, "w2"], ["y"])])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32768]))
    path = tmp_path / "big.onnx"
    onnx.save(model, str(path))
    out, _ = run_json("inspect", path)
    assert out["summary"]["blocks"] == 1 and out["passes"]
