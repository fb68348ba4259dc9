"""LogIntAttention's block paths against the reference, bit for bit: AMX-INT8 tiles (blocks of 32
rows and columns, 64-byte depth steps) where the CPU has them, AVX-512 VNNI row groups of 4
under ONNXVQ_NO_AMX. Shapes straddle every padding edge; one case mixes one-pass and two-pass
rows in the same block (each row keeps its own shift)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_attention import _lis_codes, lis_case, run

from onnxvq.plugins.reference import softmax_constants
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
