"""LogIntAttention's block paths against the reference, bit for bit: AMX-INT8 tiles (blocks of 32
rows and columns, 64-byte depth steps) where the CPU has them, AVX-512 VNNI row groups of 4
under ONNXVQ_NO_AMX, the AVX2 int16-pair loops under ONNXVQ_NO_VNNI (the default on CPUs
without AVX-512 VNNI) and the plain loops under ONNXVQ_NO_VNNI + ONNXVQ_NO_AVX2. Shapes straddle
every padding edge; one case mixes one-pass and two-pass rows in the same block (each row keeps
its own shift); adversarial codes put every product at its extreme."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_attention import _lis_codes, lis_case, run

from onnxvq.plugins.reference import acc_shift, softmax_constants
from onnxvq.plugins.reference.attention import log_int_attention, scores, split_heads

# (B, N, H, D): N at 31 / 32 / 33 / 64 / 65 / 96 tokens, D below, at and past 64-byte steps;
# N = 1, 49 (Swin's windows) and 197 (DeiT: 13 score blocks, an odd count, and a last row group
# of one row) at batch 8 / 1.
EDGES = [(1, 31, 1, 64), (2, 32, 2, 64), (1, 33, 1, 80), (1, 64, 3, 16), (1, 65, 2, 128),
         (2, 96, 1, 256), (1, 40, 2, 33), (1, 1, 1, 64), (8, 49, 2, 32), (1, 197, 6, 64)]


def check_edges(lib: str) -> None:
    for i, shape in enumerate(EDGES):
        for steps in (1, 2):
            x, attrs = lis_case(shape, 50 + i, steps)
            np.testing.assert_array_equal(run(x, attrs, lib), log_int_attention(x, **attrs))


def mixed_case(steps: int) -> tuple[np.ndarray, dict]:
    """Flat query rows (at the zero point: all their scores 0, one code, one pass) at random
    among rows spread so wide that their weights need two bytes; a row slot of a block is flat in
    one block and wide in the next."""
    x, attrs = lis_case((2, 150, 2, 48), 90 + steps, steps)
    flat = np.random.default_rng(steps).random(150) < 0.5
    x[:, flat, 0] = attrs["q_zero_point"]
    q, k, _ = split_heads(x, 2)
    s = scores(q, k, attrs["q_zero_point"], attrs["k_zero_point"])
    s_x = 0.05
    qk = float(np.float32(s_x * 60.0 / float(s[:, :, ~flat].std())))
    return x, dict(attrs, qk_scale=qk, scores_scale=s_x,
                   **softmax_constants(s_x, 4, steps).attributes())


def check_mixed(lib: str) -> None:
    for steps in (1, 2):
        x, attrs = mixed_case(steps)
        flat = np.random.default_rng(steps).random(150) < 0.5
        codes = _lis_codes(x, attrs)
        live = codes <= 15
        span = np.where(live, codes, -1).max(-1) - np.where(live, codes, 99).min(-1)
        assert (span[:, :, flat] == 0).all() and (span[:, :, ~flat] > 8).mean() > 0.5
        np.testing.assert_array_equal(run(x, attrs, lib), log_int_attention(x, **attrs))


@pytest.mark.parametrize("shape", EDGES, ids=str)
def test_lis_block_edges_bit_exact(library, shape):
    for steps in (1, 2):
        x, attrs = lis_case(shape, 50 + EDGES.index(shape), steps)
        np.testing.assert_array_equal(run(x, attrs, library), log_int_attention(x, **attrs))


def test_lis_mixed_pass_rows_bit_exact(library):
    check_mixed(library)


def test_lis_vnni_groups_without_amx(library):
    # ONNXVQ_NO_AMX (read once per process) keeps the AVX-512 VNNI row groups on an AMX machine.
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import "
            f"test_attention_lis_paths as p, test_attention as t; p.check_edges({library!r}); "
            f"p.check_mixed({library!r}); t.check_fuzz({library!r}); "
            f"t.check_lis_tables({library!r})")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ONNXVQ_NO_AMX": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# The AVX2 cases: N = 1 / 7 / 49 / 197 (row groups of 4 and their tails; 16-column score blocks
# and their last 8), head dims 16 / 32 / 64 and the odd 33 (a depth pair with one element), 24 and
# 80 (an 8-column output tail), batch 1 and 3.
AVX2_SHAPES = [(1 + 2 * ((i + j) % 2), n, 2, d) for i, n in enumerate((1, 7, 49, 197))
               for j, d in enumerate((16, 32, 64))] + [(1, 7, 2, 33), (3, 49, 1, 24),
                                                       (1, 50, 2, 80)]


def lis_bits_case(shape: tuple[int, int, int, int], seed: int, steps: int,
                  bits: int) -> tuple[np.ndarray, dict]:
    """lis_case with `bits`-bit log codes (3: eight live codes, the weights 2^(7 - a))."""
    x, attrs = lis_case(shape, seed, steps)
    step = np.float32(0.03 * 2.0 ** -acc_shift(bits, steps))
    return x, dict(attrs, acc_scale=float(step),
                   **softmax_constants(attrs["scores_scale"], bits, steps).attributes())


def adversarial_case(shape: tuple[int, int, int, int], seed: int, steps: int,
                     saturate: bool) -> tuple[np.ndarray, dict]:
    """Every code 0 or 255 and every zero point 0 or 255: each product |q - z_q| |k - z_k| and
    |v - z_v| is 0 or 255 (vpmaddubsw's int16 pair sums would saturate); the scores span the
    int8 range (rows from flat to one-hot: the largest weights against +-255) or, `saturate`,
    clamp at -128 / 127."""
    x, attrs = lis_case(shape, seed, steps)
    rng = np.random.default_rng(seed)
    x = np.where(rng.random(x.shape) < 0.5, 0, 255).astype(np.uint8)
    z = rng.choice([0, 255], 3)
    attrs = dict(attrs, q_zero_point=int(z[0]), k_zero_point=int(z[1]), v_zero_point=int(z[2]))
    q, k, _ = split_heads(x, shape[2])
    s = np.abs(scores(q, k, attrs["q_zero_point"], attrs["k_zero_point"])).max()
    assert s > 0.3 * shape[3] * 255 ** 2  # near the largest score a head dim allows
    scale = 1.0 if saturate else attrs["scores_scale"] * 120.0 / float(s)
    return x, dict(attrs, qk_scale=float(np.float32(scale)))


def ties_case(seed: int, steps: int, qk: float, divisor: float) -> tuple[np.ndarray, dict]:
    """Codes within 3 of their zero points and qk_scale / scores_scale = 1/2 in float32 (0.15 /
    0.3, 0.07 / 0.14): the score quotients of odd S land next to ties, where fl(x fl(1/divisor))
    rounds the other way than fl(x / divisor) for ~6 % of S (0.15 / 0.3) in -1000..1000; the AVX2
    score codes' checked multiply must hand those to the division (quotient_avx2.h)."""
    x, attrs = lis_case((1, 49, 2, 64), seed, steps)
    rng = np.random.default_rng(seed)
    z = np.array([attrs[f"{t}_zero_point"] for t in "qkv"], np.int64)
    x = (z[None, None, :, None, None] + rng.integers(-3, 4, x.shape)).astype(np.uint8)
    return x, dict(attrs, qk_scale=qk, scores_scale=divisor,
                   **softmax_constants(divisor, 4, steps).attributes())


def avx2_cases() -> dict[str, tuple[np.ndarray, dict]]:
    """Each shape with both octave steps, bits 3 or 4 and a bias or none in turn (each value
    of each next to each of the others across the shapes), then the adversarial codes."""
    cases = {}
    for i, shape in enumerate(AVX2_SHAPES):
        for steps in (1, 2):
            bits = 3 if (i + steps) % 2 else 4
            x, attrs = lis_bits_case(shape, 200 + i, steps, bits)
            if (i // 2 + steps) % 2:
                rng = np.random.default_rng(300 + i)
                n = shape[1]
                attrs["bias"] = np.where(rng.random((1, shape[2], n, n)) < 0.2, -30.0,
                                         rng.normal(0, 2, (1, shape[2], n, n))).astype(np.float32)
            cases[f"{shape} steps {steps} bits {bits} bias {'bias' in attrs}"] = (x, attrs)
    for i, shape in enumerate([(1, 197, 2, 64), (3, 7, 1, 256), (1, 49, 1, 33)]):
        for steps, saturate in ((1, False), (2, False), (1, True)):
            cases[f"adversarial {shape} steps {steps} saturate {saturate}"] = adversarial_case(
                shape, 400 + i, steps, saturate)
    for steps, qk, divisor in ((1, 0.15, 0.3), (2, 0.07, 0.14)):
        cases[f"ties steps {steps} divisor {divisor}"] = ties_case(500 + steps, steps, qk,
                                                                    divisor)
    return cases


def dump_avx2_cases(lib: str, path: str) -> None:
    np.savez(path, *(run(x, attrs, lib) for x, attrs in avx2_cases().values()))


@pytest.mark.parametrize("path,env", [("avx2", {"ONNXVQ_NO_VNNI": "1"}),
                                      ("portable", {"ONNXVQ_NO_VNNI": "1", "ONNXVQ_NO_AVX2": "1"})])
def test_lis_avx2_and_portable_paths_bit_exact(library, tmp_path, path, env):
    # The switches are read once per process: each path's outputs come from a fresh one; they are
    # compared with the reference and with the other paths' (the default: AMX, VNNI or AVX2).
    out = tmp_path / f"{path}.npz"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import "
            f"test_attention_lis_paths as p; p.dump_avx2_cases({library!r}, {str(out)!r})")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.load(out)
    for i, (name, (x, attrs)) in enumerate(avx2_cases().items()):
        want = log_int_attention(x, **attrs)
        assert x.shape[1] == 1 or "saturate True" in name or len(np.unique(want)) > 2, name
        np.testing.assert_array_equal(got[f"arr_{i}"], want, err_msg=f"{path}: {name}")
        np.testing.assert_array_equal(got[f"arr_{i}"], run(x, attrs, library), err_msg=name)
