"""QLinearAttention's AVX2 path (attention_avx2.h: q, K^T, V centred in int16 pairs, vpmaddwd
row groups, the AVX-512 softmax and output rows in 8-lane halves) against the portable loops,
the process' default path and the reference.

Every native path does the same float operations in the softmax (the AVX-512 polynomial exp, 16
lane partial sums reduced in one order), so all paths must agree bit for bit on every input, not
only within the reference's softmax bound: a difference is an integer product, a padding or a
tail bug. Paths are chosen per process by env switches (read once): ONNXVQ_NO_VNNI=1 takes AVX2
on any CPU (it also turns AMX off), adding ONNXVQ_NO_AVX2=1 the portable loops; with neither, the
CPU's best path (AMX or AVX-512 VNNI where present, so on such a CPU this also checks the AVX2
rows against the AVX-512 ones; on an AVX2-only CPU the default is AVX2 itself).

The shapes cover the tails of the 8-column blocks and 4-row groups (N = 1, 7, 50, 197), head
dims 16 .. 80 and odd ones (pairs padded), batch 1 and 3, with and without a bias, both QKV
layouts, a nonzero probs zero point; and adversarial codes (q = 255, k and v at 0 / 255, zero
points at the ends) whose products would saturate vpmaddubsw's int16 pair sums.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_attention import assert_close, fuzz_case, per_head, qlinear_attention, run

PATHS = {"default": {}, "avx2": {"ONNXVQ_NO_VNNI": "1"},
         "portable": {"ONNXVQ_NO_VNNI": "1", "ONNXVQ_NO_AVX2": "1"}}

SHAPES = [(b, n, 2, d) for n in (1, 7, 50, 197) for d in (16, 24, 32, 64, 80) for b in (1, 3)
          if not (n == 197 and b == 3 and d != 64)] + [(1, 197, 6, 64), (3, 9, 2, 13),
                                                       (1, 33, 3, 1), (2, 20, 1, 256)]


def shape_case(i: int) -> tuple[np.ndarray, dict]:
    """SHAPES[i] as fuzz_case, with a bias on every other case (per head or shared, a window
    mask for batch 3), layout 1 on every fifth, probs zero point 7 on every third."""
    b, n, h, d = SHAPES[i]
    x, attrs = fuzz_case((b, n, h, d), 500 + i)
    rng = np.random.default_rng(600 + i)
    if i % 2:
        bias = rng.normal(0, 2, (1, h if i % 4 == 1 else 1, n, n)).astype(np.float32)
        if b == 3:
            bias = bias + np.where(rng.random((3, 1, n, n)) < 0.3, -100.0, 0.0).astype(
                np.float32)
        attrs["bias"] = bias
    if i % 3 == 2:
        attrs.update(probs_zero_point=7, probs_scale=1 / 248)
    if i % 5 == 4:
        return per_head(x), dict(attrs, qkv_layout=1)
    return x, attrs


def adversarial_cases():
    """Codes at the ends: q = 255 against k, v in {0, 255} with zero points 0 / 255 (|S| up to
    D 255^2 of either sign, every pair product 255^2), at D = 256 too; qk_scale keeps the rows
    spread (not one-hot) so the probabilities and the A V product are exercised."""
    rng = np.random.default_rng(77)
    for b, n, h, d in ((1, 50, 2, 64), (3, 7, 1, 80), (1, 197, 1, 256), (2, 33, 2, 13)):
        x = np.where(rng.random((b, n, 3, h, d)) < 0.5, 0, 255).astype(np.uint8)
        x[:, :, 0] = 255  # every query code 255
        for zq, zk, zv in ((0, 0, 0), (0, 255, 255), (255, 0, 0), (128, 255, 0)):
            _, attrs = fuzz_case((b, n, h, d), 0)
            attrs.update(q_zero_point=zq, k_zero_point=zk, v_zero_point=zv,
                         qk_scale=float(np.float32(0.5 / (d * 255.0))),
                         acc_scale=float(np.float32(1 / 255) * np.float32(0.03)), out_scale=0.2)
            yield x, attrs


def cases() -> list[tuple[np.ndarray, dict]]:
    return [shape_case(i) for i in range(len(SHAPES))] + list(adversarial_cases())


def outputs(lib: str, dest: str) -> None:
    """Every case's output on this process' path, saved to `dest` (npz)."""
    np.savez(dest, *[run(x, attrs, lib) for x, attrs in cases()])


@pytest.fixture(scope="module")
def path_outputs(library, tmp_path_factory) -> dict[str, list[np.ndarray]]:
    """Each path's outputs, one fresh process per path (the switches are read once)."""
    out = {}
    for name, env in PATHS.items():
        dest = tmp_path_factory.mktemp("avx2") / f"{name}.npz"
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import "
                f"test_attention_avx2 as t; t.outputs({library!r}, {str(dest)!r})")
        environ = {k: v for k, v in os.environ.items() if k not in ("ONNXVQ_NO_VNNI",
                                                                     "ONNXVQ_NO_AVX2")}
        proc = subprocess.run([sys.executable, "-c", code], env={**environ, **env},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        saved = np.load(dest)
        out[name] = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return out


def test_paths_bit_identical(path_outputs):
    n = len(SHAPES)
    for i in range(len(cases())):
        label = str(SHAPES[i]) if i < n else f"adversarial {i - n}"
        for name in ("default", "portable"):
            np.testing.assert_array_equal(path_outputs["avx2"][i], path_outputs[name][i],
                                          err_msg=f"avx2 vs {name}, {label}")


def test_avx2_path_matches_reference(path_outputs):
    got = path_outputs["avx2"]
    for i, (x, attrs) in enumerate(cases()):
        want = qlinear_attention(x, **attrs)
        assert want.std() > 0.3 or x.shape[1] == 1, i  # not a degenerate output
        assert_close(got[i], want)


def test_adversarial_codes_are_bit_exact(path_outputs):
    """The extreme codes' scores are multiples of 255^2 and the rows' probabilities come in a
    few exact values, so here every path equals the reference (numpy's exp) bit for bit too."""
    n = len(SHAPES)
    for k, (x, attrs) in enumerate(adversarial_cases()):
        want = qlinear_attention(x, **attrs)
        assert len(np.unique(want)) > 2
        for name in PATHS:
            np.testing.assert_array_equal(path_outputs[name][n + k], want,
                                          err_msg=f"{name}, adversarial {k}")


def cpu_seconds(lib: str) -> None:
    """Prints the process CPU time of three runs of one DeiT-S-sized node (batch 2, one
    session), after a warm-up run."""
    import time

    import onnxruntime as ort
    from test_attention import _model

    from onnxvq.core.runtime import session_options

    x, attrs = fuzz_case((2, 197, 6, 64), 3)
    so = session_options(custom_ops=False)
    so.register_custom_ops_library(lib)
    sess = ort.InferenceSession(_model(attrs, functions=False).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    sess.run(None, {"x": x})
    start = time.process_time()
    for _ in range(3):
        sess.run(None, {"x": x})
    print(time.process_time() - start)


def test_avx2_switch_selects_the_portable_loops(library):
    """The paths agree bit for bit, so the switch is seen in the time: the portable loops take
    several times the AVX2 path's CPU on one DeiT-S-sized node (measured ~40x; asserted 3x, which
    holds under any load since it is CPU time, not wall time)."""
    times = {}
    for name in ("avx2", "portable"):
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import "
                f"test_attention_avx2 as t; t.cpu_seconds({library!r})")
        proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **PATHS[name]},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        times[name] = float(proc.stdout.split()[-1])
    assert times["portable"] > 3 * times["avx2"], times
