"""The integer references of onnxvq's custom ops: the definition every backend is tested against.

Pure numpy on int64, integers in and integers out; the spec with its overflow proofs is
plugins/README.md. The float helpers here only derive parameters or decode codes for tests.
"""

from onnxvq.plugins.reference.intmath import bit_length, isqrt, rnd_shift
from onnxvq.plugins.reference.layernorm import (
    MAX_CHANNELS,
    LayerNormParams,
    dequantize_output,
    int_layer_norm,
    layernorm_params,
)
from onnxvq.plugins.reference.softmax import (
    MAX_ROW,
    SoftmaxConstants,
    acc_shift,
    code_weights,
    decode_log2_codes,
    decode_log_int_matmul,
    int_exp,
    log_int_matmul,
    log_int_softmax,
    max_code,
    softmax_constants,
    sum_bits,
    zero_code,
)

__all__ = [
    "MAX_CHANNELS",
    "MAX_ROW",
    "LayerNormParams",
    "SoftmaxConstants",
    "acc_shift",
    "bit_length",
    "code_weights",
    "decode_log2_codes",
    "decode_log_int_matmul",
    "dequantize_output",
    "int_exp",
    "int_layer_norm",
    "isqrt",
    "layernorm_params",
    "log_int_matmul",
    "log_int_softmax",
    "max_code",
    "rnd_shift",
    "softmax_constants",
    "sum_bits",
    "zero_code",
]
