"""QLinearAttention and LogIntAttention: the native kernels (AVX-512 VNNI and portable paths) and
the local functions against the references (plugins/reference/attention.py).

LogIntAttention is exact throughout and must match bit for bit on every input.

The integer parts are exact; the float softmax is not (each backend has its own exp and
summation order), so on generic inputs a probability code may move by one. Measured on these
fuzz cases: no output code differs at all; the bound asserted is <= 1 code on <= 0.1 % of the
outputs. Inputs whose probabilities are exactly representable (one-hot rows, all-equal rows,
extreme codes) must match bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxvq.core.graph import to_model
from onnxvq.core.runtime import session_options
from onnxvq.plugins.attention_functions import qlinear_attention_function
from onnxvq.plugins.ops import add_functions, has_attention_bias, make_attention_node
from onnxvq.plugins.reference import acc_shift, softmax_constants
from onnxvq.plugins.reference.attention import (
    float_scores,
    log_int_attention,
    qlinear_attention,
    quantize,
    scores,
    split_heads,
)
from onnxvq.plugins.reference.softmax import log_int_softmax

FUZZ = [(2, 65, 3, 32), (1, 1, 1, 1), (3, 17, 2, 13), (1, 197, 6, 64), (2, 50, 4, 100),
        (1, 20, 1, 256)]


def _model(attrs: dict, functions: bool, shape=None) -> onnx.ModelProto:
    op = "LogIntAttention" if "scores_scale" in attrs else "QLinearAttention"
    if "bias" in attrs:  # the tensor attribute
        attrs = dict(attrs, bias=numpy_helper.from_array(np.asarray(attrs["bias"], np.float32)))
    node = helper.make_node(op, ["x"], ["y"], domain="com.onnxvq", **attrs)
    graph = helper.make_graph([node], "attn", [helper.make_tensor_value_info(
        "x", TensorProto.UINT8, shape)], [helper.make_tensor_value_info("y", TensorProto.UINT8,
                                                                          None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.onnxvq", 1)])
    model.ir_version = 10
    return add_functions(model) if functions else model


def run(x: np.ndarray, attrs: dict, lib: str | None) -> np.ndarray:
    """The kernel (lib given; no function in the model, so only it can run) or the function."""
    so = session_options(custom_ops=False)
    if lib is not None:
        so.register_custom_ops_library(lib)
    model = _model(attrs, functions=lib is None)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def fuzz_case(shape: tuple[int, int, int, int], seed: int) -> tuple[np.ndarray, dict]:
    b, n, h, d = shape
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (b, n, 3, h, d), dtype=np.uint8)
    z = rng.integers(100, 156, 4)
    s_q, s_k, s_v = 0.04, 0.035 / np.sqrt(d), 0.03
    attrs = dict(num_heads=h, q_zero_point=int(z[0]), k_zero_point=int(z[1]),
                 v_zero_point=int(z[2]), qk_scale=float(np.float32(s_q) * np.float32(s_k)),
                 probs_scale=1 / 255, probs_zero_point=0,
                 acc_scale=float(np.float32(1 / 255) * np.float32(s_v)),
                 out_scale=0.02, out_zero_point=int(z[3]))
    return x, attrs


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert got.shape == want.shape and diff.max() <= 1 and np.mean(diff > 0) <= 1e-3


def lis_case(shape: tuple[int, int, int, int], seed: int, steps: int) -> tuple[np.ndarray, dict]:
    """The --lis form of fuzz_case: int8 scores of scale 0.07, 4-bit log codes."""
    x, attrs = fuzz_case(shape, seed)
    del attrs["probs_scale"], attrs["probs_zero_point"]
    step = np.float32(0.03 * 2.0 ** -acc_shift(4, steps))
    return x, dict(attrs, scores_scale=0.07, acc_scale=float(step),
                   **softmax_constants(0.07, 4, steps).attributes())


def check_fuzz(lib: str) -> None:
    for i, shape in enumerate(FUZZ):
        x, attrs = fuzz_case(shape, i)
        assert_close(run(x, attrs, lib), qlinear_attention(x, **attrs))
        for steps in (1, 2):
            x, attrs = lis_case(shape, i, steps)
            np.testing.assert_array_equal(run(x, attrs, lib), log_int_attention(x, **attrs))


@pytest.mark.parametrize("steps", [1, 2], ids=["log2", "log-sqrt2"])
@pytest.mark.parametrize("shape", FUZZ, ids=str)
def test_lis_kernel_and_function_bit_exact(library, shape, steps):
    x, attrs = lis_case(shape, FUZZ.index(shape), steps)
    want = log_int_attention(x, **attrs)
    assert len(np.unique(want)) > 2 or shape[1] == 1  # not a degenerate output
    np.testing.assert_array_equal(run(x, attrs, library), want)
    np.testing.assert_array_equal(run(x, attrs, None), want)


def _lis_codes(x: np.ndarray, attrs: dict) -> np.ndarray:
    """The reference's softmax log codes inside log_int_attention."""
    q, k, _ = split_heads(x, attrs["num_heads"])
    s = float_scores(scores(q, k, attrs["q_zero_point"], attrs["k_zero_point"]), attrs["qk_scale"])
    xs = quantize(s, attrs["scores_scale"], 0, -128, 127).astype(np.int8)
    return log_int_softmax(xs, **{k: attrs[k] for k in ("x0", "b", "c", "n", "bits",
                                                         "octave_steps")})


@pytest.mark.parametrize("steps,spread", [(1, "flat"), (2, "flat"), (1, "wide"), (2, "wide"),
                                          (1, "tiny")])
def test_lis_kernel_bit_exact_across_scales(library, steps, spread):
    """The AVX-512 path's choices: flat rows (codes within a few log steps: one u8 pass of
    w >> t), wide ones (two passes, w >> 8 and w & 255), FMA-corrected division for scales in
    2^-40..2^40 and vdivps outside ("tiny": qk_scale 1e-13, every score code 0), row groups cut
    short (odd N). Score-code spread set from the scores' own deviation."""
    rng = np.random.default_rng(7 * steps + len(spread))
    b, n, h, d = (int(v) for v in rng.integers([1, 5, 1, 3], [3, 70, 3, 48]))
    x, attrs = lis_case((b, n, h, d), steps, steps)
    q, k, _ = split_heads(x, h)
    s_std = float(scores(q, k, attrs["q_zero_point"], attrs["k_zero_point"]).std())
    s_x = float(np.float32(10.0 ** rng.uniform(-2.5, -0.5)))
    target = {"flat": 1.0, "wide": 60.0, "tiny": 0.0}[spread]  # code deviation
    qk = float(np.float32(s_x * target / s_std)) if target else 1e-13
    attrs = dict(attrs, qk_scale=qk, scores_scale=s_x,
                 **softmax_constants(s_x, 4, steps).attributes())
    codes = _lis_codes(x, attrs)
    span = np.where(codes <= 15, codes, -1).max(-1) - np.where(codes <= 15, codes, 99).min(-1)
    assert (np.median(span) <= 4) if spread == "flat" else (span.max() > 8) or spread == "tiny"
    np.testing.assert_array_equal(run(x, attrs, library), log_int_attention(x, **attrs))


def lis_table_cases():
    """Rows for the byte-table path (AVX-512 VBMI): row lengths around the 64-byte blocks, score
    ranges below 64, up to 127 and from 128 (one or two vpermi2b per lookup), codes within a few
    log steps (one u8 pass) and spread wide (two), both octave steps, zero points at the ends."""
    rng = np.random.default_rng(2026)
    for i, n in enumerate((1, 2, 63, 64, 65, 128, 130, 197, 257)):
        steps = 1 + i % 2
        x, attrs = lis_case((1 + i % 2, n, 2, int(rng.integers(3, 40))), 100 + i, steps)
        q, k, _ = split_heads(x, 2)
        s_std = max(float(scores(q, k, attrs["q_zero_point"], attrs["k_zero_point"]).std()), 1)
        for target in (0.5, 8.0, 30.0, 90.0):  # score-code deviation: row ranges ~4 .. 255
            s_x = float(np.float32(10.0 ** rng.uniform(-2.5, -0.5)))
            yield x, dict(attrs, qk_scale=float(np.float32(s_x * target / s_std)),
                          scores_scale=s_x, **softmax_constants(s_x, 4, steps).attributes())


def check_lis_tables(lib: str) -> None:
    ranges, spans = [], []
    for x, attrs in lis_table_cases():
        q, k, _ = split_heads(x, attrs["num_heads"])
        s = float_scores(scores(q, k, attrs["q_zero_point"], attrs["k_zero_point"]),
                         attrs["qk_scale"])
        sc = quantize(s, attrs["scores_scale"], 0, -128, 127).astype(np.int64)
        ranges.append(int((sc.max(-1) - sc.min(-1)).max()))
        codes = _lis_codes(x, attrs)
        spans.append(int((np.where(codes <= 15, codes, -1).max(-1) - codes.min(-1)).max()))
        np.testing.assert_array_equal(run(x, attrs, lib), log_int_attention(x, **attrs))
    assert min(ranges) < 64 and max(ranges) >= 128 and any(64 <= r < 128 for r in ranges)
    assert min(spans) <= 8 < max(spans)  # one u8 pass and two


def test_lis_byte_tables_bit_exact(library):
    check_lis_tables(library)


def test_lis_row_loops_without_vbmi(library):
    # ONNXVQ_NO_VBMI (read once per process) keeps the AVX2 row loops on a VBMI machine.
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_attention"
            f" as t; t.check_lis_tables({library!r}); t.check_fuzz({library!r})")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ONNXVQ_NO_VBMI": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("shape", FUZZ, ids=str)
def test_kernel_and_function_match_reference(library, shape):
    x, attrs = fuzz_case(shape, FUZZ.index(shape))
    want = qlinear_attention(x, **attrs)
    assert_close(run(x, attrs, library), want)
    assert_close(run(x, attrs, None), want)


def _exact_cases():
    """Inputs whose softmax is exact in float32 whatever the exp: one-hot rows (one score far
    above the rest), all-equal rows, and the extreme codes 0 / 255 against zero points 255 / 0
    (the largest |S| = D * 255^2, both signs)."""
    x, attrs = fuzz_case((2, 33, 2, 64), 9)
    one_hot = x.copy()
    one_hot[:, :, 1] = 0  # every key 0 ...
    one_hot[:, 5, 1] = 255  # ... but token 5's: each row's scores peak at j = 5
    yield one_hot, dict(attrs, q_zero_point=0, k_zero_point=0, qk_scale=1.0)
    yield np.full_like(x, 77), attrs  # all scores equal: p = 1/N in every row
    lo_hi = np.where(np.arange(64) % 2, 255, 0).astype(np.uint8) * np.ones_like(x)
    for zq, zk in ((0, 0), (255, 0), (0, 255), (255, 255)):
        yield lo_hi, dict(attrs, q_zero_point=zq, k_zero_point=zk, v_zero_point=255 - zk,
                          qk_scale=1e-5)


def check_exact(lib: str | None) -> None:
    for x, attrs in _exact_cases():
        np.testing.assert_array_equal(run(x, attrs, lib), qlinear_attention(x, **attrs))
        _, lis = lis_case((2, 33, 2, 64), 9, 1)
        lis = dict(lis, **{k: attrs[k] for k in ("q_zero_point", "k_zero_point", "v_zero_point",
                                                 "qk_scale")})
        np.testing.assert_array_equal(run(x, lis, lib), log_int_attention(x, **lis))


def test_exact_cases_are_bit_exact(library):
    check_exact(library)
    check_exact(None)


def bias_cases():
    """(x, attrs with bias) over the bias layouts: [1, H, N, N] relative positions, [1, 1, N, N]
    shared by the heads, a window mask [W, 1, N, N] of 0 / -100 (Swin's shifted windows, batch
    3 W) and both summed [W, H, N, N]; N not a multiple of 16 (the masked tail)."""
    for i, (w, n, h, d, heads) in enumerate([(1, 49, 3, 32, 3), (1, 65, 2, 16, 1),
                                             (4, 49, 3, 32, 1), (4, 17, 2, 13, 2),
                                             (1, 197, 6, 64, 6)]):
        x, attrs = fuzz_case((3 * w, n, h, d), 20 + i)
        rng = np.random.default_rng(40 + i)
        bias = rng.normal(0, 2, (1, heads, n, n)).astype(np.float32)
        if w > 1:
            mask = np.where(rng.random((w, 1, n, n)) < 0.3, -100.0, 0.0).astype(np.float32)
            bias = mask if heads == 1 else bias + mask
        yield x, dict(attrs, bias=bias)


def check_bias(lib: str | None) -> None:
    for x, attrs in bias_cases():
        want = qlinear_attention(x, **attrs)
        assert want.std() > 0.5 and not np.array_equal(  # the bias moves the outputs
            want, qlinear_attention(x, **{k: v for k, v in attrs.items() if k != "bias"}))
        assert_close(run(x, attrs, lib), want)
    # a bias of -1e4 off one key per row: one-hot probabilities, exact whatever the exp
    x, attrs = fuzz_case((2, 33, 2, 24), 5)
    one_hot = np.full((1, 2, 33, 33), -1e4, np.float32)
    one_hot[0, :, np.arange(33), (7 * np.arange(33)) % 33] = 0
    np.testing.assert_array_equal(run(x, dict(attrs, bias=one_hot), lib),
                                  qlinear_attention(x, **attrs, bias=one_hot))


def test_bias_kernel_and_function_match_reference(library):
    check_bias(library)
    check_bias(None)


def per_head(x: np.ndarray) -> np.ndarray:
    """Packed codes [B, N, 3, H, D] rearranged as qkv_layout 1's [B, N, H, 3·D]."""
    b, n, _, h, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 3, 2, 4).reshape(b, n, h, 3 * d))


def check_layout(lib: str | None) -> None:
    """qkv_layout 1 (TinyViT's per-head packing) computes what layout 0 does on the same q, k, v:
    the reference exactly, the kernel and the function within the softmax bound; with a bias."""
    cases = [fuzz_case(shape, i) for i, shape in enumerate(FUZZ[:4])] + list(bias_cases())[2:4]
    for x, attrs in cases:
        want = qlinear_attention(x, **attrs)
        np.testing.assert_array_equal(qlinear_attention(per_head(x), **attrs, qkv_layout=1), want)
        assert_close(run(per_head(x), dict(attrs, qkv_layout=1), lib), want)


def test_per_head_layout_matches_packed(library):
    check_layout(library)
    check_layout(None)


def test_bad_bias_is_a_clear_error(library):
    x, attrs = fuzz_case((3, 9, 2, 8), 0)
    for bias, why in ((np.zeros((2, 1, 9, 9)), "multiple of the bias' windows"),
                      (np.zeros((1, 2, 8, 8)), "bias must be"),
                      (np.zeros((1, 3, 9, 9)), "bias must be")):
        with pytest.raises(Exception, match=why):
            run(x, dict(attrs, bias=bias), library)


@pytest.mark.parametrize("switches", [("ONNXVQ_NO_VNNI",), ("ONNXVQ_NO_VNNI", "ONNXVQ_NO_AVX2")],
                         ids=["avx2", "portable"])
def test_paths_without_vnni(library, switches):
    # The switches are read once per process: the AVX2 rows (ONNXVQ_NO_VNNI) and the portable
    # loops (and ONNXVQ_NO_AVX2) each need a fresh one.
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_attention"
            f" as t; t.check_fuzz({library!r}); t.check_exact({library!r});"
            f" t.check_bias({library!r}); t.check_layout({library!r})")
    proc = subprocess.run([sys.executable, "-c", code],
                          env={**os.environ, **dict.fromkeys(switches, "1")},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bad_attributes_are_a_clear_error(library):
    x, attrs = fuzz_case((1, 4, 2, 8), 0)
    with pytest.raises(Exception, match="num_heads"):
        run(x[:, :, :, :1].copy(), attrs, library)  # [1, 4, 3, 1, 8] with num_heads 2
    with pytest.raises(Exception, match="missing attribute"):
        run(x, {k: v for k, v in attrs.items() if k != "probs_scale"}, library)
    _, lis = lis_case((1, 4, 2, 8), 0, 1)
    with pytest.raises(Exception, match="bits must lie in 1..4"):
        run(x, dict(lis, bits=8), library)


def test_polygraphy_reference_hook(library):
    """`polygraphy run --pluginref` evaluates both fused ops with their references."""
    from polygraphy.backend.onnx import GsFromOnnx
    from polygraphy.backend.pluginref import PluginRefRunner

    from onnxvq.plugins.polygraphy_ext import get_arg_groups

    get_arg_groups()
    for (x, attrs), reference in ((fuzz_case((2, 65, 3, 32), 0), qlinear_attention),
                                  (lis_case((2, 65, 3, 32), 0, 2), log_int_attention),
                                  (list(bias_cases())[2], qlinear_attention)):
        with PluginRefRunner(GsFromOnnx(_model(attrs, functions=False, shape=x.shape))) as ref:
            got = ref.infer({"x": x})["y"]
        np.testing.assert_array_equal(got, reference(x, **attrs))
        assert_close(run(x, attrs, library), got)


def test_the_bias_ops_are_in_the_body_only_with_a_bias():
    """The default QLinearAttention body has none of the bias' ops (it used to add a zero bias
    in every attention); the biased body has exactly them more: the bias constant, its window
    view (three Shapes, a -1 constant, a Concat), the two Reshapes and the Add."""
    plain, biased = (qlinear_attention_function(17, bias=b) for b in (False, True))
    ops = [Counter(n.op_type for n in f.node) for f in (plain, biased)]
    assert ops[1] - ops[0] == Counter(Shape=3, Constant=2, Reshape=2, Concat=1, Add=1)
    assert not ops[0] - ops[1] and (len(plain.node), len(biased.node)) == (78, 87)
    assert [a.name for a in plain.attribute_proto] == ["qkv_layout"]
    assert [a.name for a in biased.attribute_proto] == ["bias", "qkv_layout"]


def test_a_graph_takes_the_biased_body_with_its_first_biased_node():
    """Bodies are per op, not per node: the graph keeps the bias-free one until a node with a
    bias is added, then holds the biased one, whose default zeros serve the unbiased nodes."""
    (x, attrs), (xb, battrs) = fuzz_case((2, 17, 2, 13), 3), list(bias_cases())[3]
    g = gs.Graph(opset=17)
    ins = [gs.Variable(n, np.uint8, list(v.shape)) for n, v in (("x", x), ("xb", xb))]
    g.inputs = ins
    g.outputs = [make_attention_node(g, "QLinearAttention", ins[0], attrs, name="plain")]
    assert not has_attention_bias(g.functions)
    bias = battrs.pop("bias")
    g.outputs.append(make_attention_node(g, "QLinearAttention", ins[1], battrs, name="biased",
                                         bias=bias))
    assert has_attention_bias(g.functions)
    assert sum(f.name == "QLinearAttention" for f in g.functions) == 1
    model = to_model(g)
    assert has_attention_bias(model.functions)
    sess = ort.InferenceSession(model.SerializeToString(), session_options(custom_ops=False),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x, "xb": xb})
    assert_close(got[0], qlinear_attention(x, **attrs))
    assert_close(got[1], qlinear_attention(xb, **battrs, bias=bias))


def test_probs_zero_point_matches_reference(library):
    """A nonzero probs_zero_point: the kernels subtract z_p sum_j (v_jd - z_v) (HeadData's vsum,
    from the AVX-512 packing loops or the scalar ones), a term that z_p = 0 multiplies away; the
    reference dequantizes the probabilities instead, so its codes are those of z_p = 0."""
    for i, shape in enumerate([(2, 65, 3, 32), (1, 50, 2, 100), (1, 20, 1, 256), (3, 17, 2, 13)]):
        x, attrs = fuzz_case(shape, 60 + i)
        attrs = dict(attrs, probs_zero_point=7, probs_scale=1 / 248)
        want = qlinear_attention(x, **attrs)
        np.testing.assert_array_equal(want, qlinear_attention(x, **dict(attrs, probs_zero_point=0)))
        assert_close(run(x, attrs, library), want)
