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
    return json.loads(done.stdout), done.stderr


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


def test_errors_leave_stdout_empty(tmp_path):
    done = runner.invoke(app, ["compare", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"),
                               "--json"])
    assert done.exit_code == 2 and done.stdout == "" and "no such file" in done.stderr


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
