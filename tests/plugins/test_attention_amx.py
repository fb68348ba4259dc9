"""QLinearAttention's AMX-INT8 path (attention_amx.h tile blocks of 32 query rows / 32 columns,
64-byte depth steps) against the AVX-512 VNNI row groups (ONNXVQ_NO_AMX) bit for bit, and both
against the reference within the softmax bound (test_attention.py). The two paths share the
softmax and output rows, so any difference is an integer product or a padding bug: the shapes
straddle every tile edge (N around 16 / 32 / 64, head dims 32 / 64 / 80 / 96 around the 64-byte
depth step), with and without a bias, both QKV layouts, batch 1 and 8, a nonzero probs zero
point. On a CPU without AMX both runs take the VNNI path and the comparison holds trivially."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_attention import assert_close, fuzz_case, per_head, qlinear_attention, run

# (B, N, H, D, bias heads: 0 none, 1 shared, H per head, -W a window mask of W)
CASES = [(1, 1, 1, 32, 0), (8, 15, 2, 32, 0), (1, 16, 3, 64, 1), (8, 17, 1, 80, 0),
         (1, 31, 2, 96, 2), (2, 32, 1, 64, 0), (1, 33, 2, 80, 2), (8, 50, 3, 32, -4),
         (1, 63, 1, 96, 0), (1, 64, 2, 64, 2), (8, 65, 1, 96, 1), (1, 97, 2, 80, 0),
         (1, 197, 6, 64, 0), (8, 197, 2, 64, 2), (2, 145, 3, 13, 3)]


def amx_case(i: int) -> tuple[np.ndarray, dict]:
    b, n, h, d, bias = CASES[i]
    x, attrs = fuzz_case((b, n, h, d), 300 + i)
    rng = np.random.default_rng(400 + i)
    if bias > 0:
        attrs["bias"] = rng.normal(0, 2, (1, bias, n, n)).astype(np.float32)
    elif bias < 0:
        attrs["bias"] = np.where(rng.random((-bias, 1, n, n)) < 0.3, -100.0, 0.0).astype(
            np.float32)
    if i % 3 == 2:  # a nonzero probs zero point: the - z_p sum_j (v_jd - z_v) term
        attrs.update(probs_zero_point=7, probs_scale=1 / 248)
    if i % 4 == 1:
        return per_head(x), dict(attrs, qkv_layout=1)
    return x, attrs


def outputs(lib: str, dest: str | None = None) -> list[np.ndarray]:
    """Every case's output on this process' path; saved to `dest` (npz) when given."""
    got = [run(*amx_case(i), lib) for i in range(len(CASES))]
    if dest is not None:
        np.savez(dest, *got)
    return got


def test_amx_and_vnni_paths_bit_identical(library, tmp_path):
    got = outputs(library)
    for i, y in enumerate(got):
        x, attrs = amx_case(i)
        want = qlinear_attention(x, **attrs)
        assert want.std() > 0.3 or CASES[i][1] == 1  # not a degenerate output
        assert_close(y, want)
    # ONNXVQ_NO_AMX is read once per process: the VNNI row groups need a fresh one.
    dest = tmp_path / "vnni.npz"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import "
            f"test_attention_amx as t; t.outputs({library!r}, {str(dest)!r})")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ONNXVQ_NO_AMX": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    vnni = np.load(dest)
    for i, y in enumerate(got):
        np.testing.assert_array_equal(y, vnni[f"arr_{i}"], err_msg=str(CASES[i]))
