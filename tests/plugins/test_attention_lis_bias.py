"""LogIntAttention with its `bias` attribute: the reference, the ONNX local function and the
native kernel bit for bit on every bias layout (shared [1, 1, N, N], per head [1, H, N, N], a
window mask [W, 1, N, N], both summed [W, H, N, N]), N across the VNNI row groups and 16-column
blocks (1, 49, 64, 197), batch 1 / 2 / 8; the AVX2 loops (ONNXVQ_NO_VNNI), the portable loops
(ONNXVQ_NO_VNNI + ONNXVQ_NO_AVX2) and the AVX2 softmax rows (ONNXVQ_NO_VBMI) too. On an AMX
machine the default run takes the AMX blocks; elsewhere the AMX test is skipped with that
reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_attention import lis_case, run

from onnxvq.plugins.reference.attention import log_int_attention

# (B, N, H, D, bias layout, W)
CASES = [(1, 1, 2, 16, "shared", 1), (2, 49, 3, 32, "head", 1), (8, 49, 3, 32, "mask", 4),
         (8, 64, 2, 64, "both", 2), (2, 64, 1, 16, "mask", 2), (1, 197, 3, 64, "head", 1),
         (8, 197, 2, 32, "both", 8), (2, 50, 2, 24, "shared", 1)]


def bias_case(i: int, steps: int = 1) -> tuple[np.ndarray, dict]:
    b, n, h, d, layout, w = CASES[i]
    x, attrs = lis_case((b, n, h, d), 70 + i, steps)
    rng = np.random.default_rng(80 + i)
    rel = rng.normal(0, 2, (1, h if layout in ("head", "both") else 1, n, n)).astype(np.float32)
    mask = np.where(rng.random((w, 1, n, n)) < 0.3, -100.0, 0.0).astype(np.float32)
    bias = {"shared": rel, "head": rel, "mask": mask, "both": rel + mask}[layout]
    return x, dict(attrs, bias=bias)


def check_bias(lib: str | None) -> None:
    for i in range(len(CASES)):
        for steps in (1, 2):
            x, attrs = bias_case(i, steps)
            want = log_int_attention(x, **attrs)
            np.testing.assert_array_equal(run(x, attrs, lib), want, err_msg=str(CASES[i]))


@pytest.mark.parametrize("case", range(len(CASES)), ids=[str(c) for c in CASES])
def test_biased_kernel_and_function_bit_exact(library, case):
    for steps in (1, 2):
        x, attrs = bias_case(case, steps)
        want = log_int_attention(x, **attrs)
        unbiased = log_int_attention(x, **{k: v for k, v in attrs.items() if k != "bias"})
        assert CASES[case][1] == 1 or (want != unbiased).mean() > 0.2  # the bias matters
        np.testing.assert_array_equal(run(x, attrs, library), want)
        np.testing.assert_array_equal(run(x, attrs, None), want)


def test_zero_bias_is_no_bias(library):
    x, attrs = bias_case(3)
    plain = {k: v for k, v in attrs.items() if k != "bias"}
    zero = dict(plain, bias=np.zeros((1, 1, 64, 64), np.float32))
    want = log_int_attention(x, **plain)
    np.testing.assert_array_equal(log_int_attention(x, **zero), want)
    np.testing.assert_array_equal(run(x, zero, library), want)


def test_huge_mask_values_saturate(library):
    """A mask of -1e30 (Hugging Face's finfo.min style) and +-2^70: past DivRn's bound, so the
    kernel divides with vdivps; every code is the reference's (the masked ones -128)."""
    x, attrs = bias_case(1)
    bias = attrs["bias"].copy()
    bias[0, :, :, ::3] = -1e30
    bias[0, :, 5, 7] = 2.0 ** 70
    attrs = dict(attrs, bias=bias)
    want = log_int_attention(x, **attrs)
    np.testing.assert_array_equal(run(x, attrs, library), want)
    np.testing.assert_array_equal(run(x, attrs, None), want)


def test_bad_bias_is_a_clear_error(library):
    x, attrs = lis_case((3, 9, 2, 8), 0, 1)
    for bias, why in ((np.zeros((2, 1, 9, 9)), "multiple of the bias' windows"),
                      (np.zeros((1, 2, 8, 8)), "bias must be"),
                      (np.zeros((1, 3, 9, 9)), "bias must be")):
        with pytest.raises(Exception, match=why):
            run(x, dict(attrs, bias=bias.astype(np.float32)), library)


@pytest.mark.parametrize("env", ["ONNXVQ_NO_VNNI", "ONNXVQ_NO_VNNI,ONNXVQ_NO_AVX2",
                                 "ONNXVQ_NO_VBMI", "ONNXVQ_NO_AMX"])
def test_biased_paths_bit_exact(library, env):
    # each switch is read once per process: the AVX2 loops, the portable loops, the AVX2 softmax
    # rows, the VNNI row groups on an AMX machine
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import "
            f"test_attention_lis_bias as t; t.check_bias({library!r})")
    proc = subprocess.run([sys.executable, "-c", code],
                          env={**os.environ, **dict.fromkeys(env.split(","), "1")},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _has_amx(), reason="this CPU has no AMX-INT8: the AMX path is not run")
def test_biased_amx_blocks_bit_exact(library):
    check_bias(library)


def test_a_biased_lis_node_takes_both_biased_bodies():
    """The first biased LogIntAttention swaps in the biased bodies (both ops: one flag); the
    biased body has exactly the bias' ops more than the plain one."""
    from collections import Counter

    import onnx_graphsurgeon as gs

    from onnxvq.plugins.attention_functions import log_int_attention_function
    from onnxvq.plugins.ops import has_attention_bias, make_attention_node

    plain, biased = (log_int_attention_function(17, bias=b) for b in (False, True))
    ops = [Counter(n.op_type for n in f.node) for f in (plain, biased)]
    assert not ops[0] - ops[1] and ops[1] - ops[0] == Counter(
        {"Constant": 2, "Shape": 3, "Concat": 1, "Reshape": 2, "Add": 1})
    x, attrs = bias_case(2)
    bias = attrs.pop("bias")
    g = gs.Graph(opset=17)
    inp = gs.Variable("x", dtype=np.uint8, shape=list(x.shape))
    g.inputs = [inp]
    g.outputs = [make_attention_node(g, "LogIntAttention", inp, attrs, name="plain")]
    assert not has_attention_bias(g.functions)
    g.outputs.append(make_attention_node(g, "LogIntAttention", inp, attrs, name="b", bias=bias))
    names = {f.name for f in g.functions if "bias" in f.attrs}
    assert {"QLinearAttention", "LogIntAttention"} <= names
