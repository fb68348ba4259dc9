"""Triton kernels of onnxvq's custom ops, bit-exact with ``onnxvq.plugins.reference``.

Every kernel takes its pointers in TensorRT's ahead-of-time calling order: input tensors, then
int32 scalars, then output tensors (then constexprs, which are compiled in). All arithmetic is
int64 on integers, written step for step after plugins/README.md; the only operations whose
semantics differ between Python and Triton (``//`` and ``%`` truncate toward zero in Triton)
are used on non-negative operands only, and ``>>`` on signed ints is arithmetic in both.

Each program handles ROWS rows (IntLayerNorm, LogIntSoftmax) or one ROWS x COLS output tile
(LogIntMatMul), so the same code runs on a GPU and in Triton's CPU interpreter
(``TRITON_INTERPRET=1``), where fewer, larger programs keep the tests fast.
"""

import triton
import triton.language as tl


@triton.jit
def _rnd_shift(a, s: tl.constexpr):
    # rnd(a, s) = sign(a) * ((|a| + 2^(s-1)) >> s): round half away from zero.
    mag = (tl.abs(a) + (1 << (s - 1))) >> s
    return tl.where(a < 0, -mag, mag)


@triton.jit
def _bit_length(v):
    # Binary search over 32, 16, ..., 1 like the reference; v >= 0.
    n = tl.zeros_like(v)
    x = v
    for s in tl.static_range(6):
        big = (x >> (32 >> s)) > 0
        n = tl.where(big, n + (32 >> s), n)
        x = tl.where(big, x >> (32 >> s), x)
    return n + (x > 0).to(tl.int64)


@triton.jit
def _isqrt(v, STEPS: tl.constexpr):
    # Newton from the power-of-two over-estimate 2^ceil(L/2); the min keeps the iterate monotone.
    x = tl.full(v.shape, 1, tl.int64) << ((_bit_length(v) + 1) >> 1)
    for _ in tl.static_range(STEPS):
        x = tl.minimum(x, (x + v // tl.maximum(x, 1)) >> 1)
    return x


@triton.jit
def int_layer_norm_kernel(
    x_ptr, alpha_ptr, gamma_ptr, beta_ptr, n_rows, y_ptr,
    C: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr,
    ZERO_POINT: tl.constexpr, EPSILON: tl.constexpr, GAMMA_SHIFT: tl.constexpr,
    LO: tl.constexpr, HI: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    mask = (rows[:, None] < n_rows) & col_ok[None, :]
    offs = rows[:, None] * C + cols[None, :]
    # Padding loads the zero point, so padded columns give xt = 0 and leave the sums alone.
    x = tl.load(x_ptr + offs, mask=mask, other=ZERO_POINT).to(tl.int64)
    alpha = tl.load(alpha_ptr + cols, mask=col_ok, other=0).to(tl.int64)
    gamma = tl.load(gamma_ptr + cols, mask=col_ok, other=0).to(tl.int64)
    beta = tl.load(beta_ptr + cols, mask=col_ok, other=0).to(tl.int64)
    xt = (x - ZERO_POINT) << alpha[None, :]
    s1 = tl.sum(xt, axis=1)
    s2 = tl.sum(xt * xt, axis=1)
    d = C * s2 - s1 * s1
    sig = _isqrt((d << 12) + C * C * EPSILON, 6)
    r = (tl.full(sig.shape, 1, tl.int64) << 54) // tl.maximum(sig, 1)
    z = _rnd_shift((C * xt - s1[:, None]) * r[:, None], 32)
    a = z * gamma[None, :] + beta[None, :]
    y = tl.minimum(tl.maximum(_rnd_shift(a, 16 + GAMMA_SHIFT), LO), HI)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _int_exp(x, row_max, X0: tl.constexpr, B: tl.constexpr, C: tl.constexpr, N: tl.constexpr):
    d = x - row_max[:, None]
    q = (-d) // (-X0)  # both operands >= 0, so truncation is floor
    r = d - q * X0
    p = (r + B) * (r + B) + C
    return (p << N) >> tl.minimum(q, 63)


@triton.jit
def log_int_softmax_kernel(
    x_ptr, n_rows, n_cols, y_ptr,
    BLOCK: tl.constexpr, ROWS: tl.constexpr,
    X0: tl.constexpr, B: tl.constexpr, C: tl.constexpr, N: tl.constexpr,
    M: tl.constexpr, Z: tl.constexpr, STEPS: tl.constexpr, SUM_BITS: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    base = rows[:, None] * n_cols
    # Long rows stream in BLOCK-wide chunks: pass 1 max, pass 2 exp sum, pass 3 codes.
    row_max = tl.full((ROWS,), -(1 << 62), tl.int64)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = row_ok[:, None] & (cols < n_cols)[None, :]
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0).to(tl.int64)
        row_max = tl.maximum(row_max, tl.max(tl.where(mask, x, -(1 << 62)), axis=1))
    total = tl.zeros((ROWS,), tl.int64)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = row_ok[:, None] & (cols < n_cols)[None, :]
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0).to(tl.int64)
        e = _int_exp(x, row_max, X0, B, C, N)
        total += tl.sum(tl.where(mask, e, 0), axis=1)
    h = tl.maximum(_bit_length(total) - SUM_BITS, 0)
    big = total >> h
    big_p = big * big
    if STEPS == 2:  # log-sqrt(2): fourth powers, S' < 2^15
        big_p = big_p * big_p
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = row_ok[:, None] & (cols < n_cols)[None, :]
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0).to(tl.int64)
        small = _int_exp(x, row_max, X0, B, C, N) >> h[:, None]
        small_p = small * small
        if STEPS == 2:
            small_p = small_p * small_p
        k = _log2_code(big_p[:, None], small_p, M + 1)
        code = tl.where((small == 0) | (k > M), Z, k)
        tl.store(y_ptr + base + cols[None, :], code.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _log2_code(big_sq, small_sq, CAP: tl.constexpr):
    # #{t in 1..CAP : big^p >> (2t-1) >= small^p} (p = 2, or 4 for log-sqrt(2)); monotone in t,
    # so a 6-step binary search.
    k = tl.zeros(small_sq.shape, tl.int64)
    for s in tl.static_range(6):
        t = k + (32 >> s)
        shift = tl.minimum(2 * t - 1, 63)
        ok = (t <= CAP) & ((big_sq >> shift) >= small_sq)
        k = tl.where(ok, t, k)
    return k


@triton.jit
def log_int_matmul_kernel(
    a_ptr, v_ptr, n_batch, n_r, n_k, n_d, y_ptr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    M: tl.constexpr, ZERO_POINT: tl.constexpr, STEPS: tl.constexpr,
):
    # One program per (batch, row tile, column tile), flattened into grid axis 0.
    pid = tl.program_id(0).to(tl.int64)
    tiles_r = tl.cdiv(n_r, BLOCK_R)
    tiles_d = tl.cdiv(n_d, BLOCK_D)
    batch = pid // (tiles_r * tiles_d)
    tile = pid % (tiles_r * tiles_d)
    rows = (tile // tiles_d) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (tile % tiles_d) * BLOCK_D + tl.arange(0, BLOCK_D)
    a_base = a_ptr + batch * n_r * n_k
    v_base = v_ptr + batch * n_k * n_d
    acc = tl.zeros((BLOCK_R, BLOCK_D), tl.int64)
    for start in range(0, n_k, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        a_mask = (rows < n_r)[:, None] & (ks < n_k)[None, :]
        # Padding reads the zero code M + 1 (weight 0) and V's zero point (value 0).
        codes = tl.load(a_base + rows[:, None] * n_k + ks[None, :], mask=a_mask, other=M + 1)
        codes = codes.to(tl.int64)
        if STEPS == 1:
            w = tl.full(codes.shape, 1, tl.int64) << tl.maximum(M - codes, 0)
        else:  # log-sqrt(2): (odd ? 181 : 128) << (ceil(M/2) - ceil(a/2)), README LogIntMatMul
            half = (codes + 1) >> 1
            w = tl.where((codes & 1) == 1, 181, 128).to(tl.int64)
            w = w << tl.maximum((M + 1) // 2 - half, 0)
        w = tl.where(codes <= M, w, 0)
        v_mask = (ks < n_k)[:, None] & (cols < n_d)[None, :]
        v = tl.load(v_base + ks[:, None] * n_d + cols[None, :], mask=v_mask, other=ZERO_POINT)
        v = v.to(tl.int64) - ZERO_POINT
        acc += tl.sum(w[:, :, None] * v[None, :, :], axis=1)
    out_mask = (rows < n_r)[:, None] & (cols < n_d)[None, :]
    y_offs = batch * n_r * n_d + rows[:, None] * n_d + cols[None, :]
    tl.store(y_ptr + y_offs, acc, mask=out_mask)
