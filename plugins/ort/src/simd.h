// The one preamble for kernels that use instructions above the library's baseline.
//
// The library is built for x86-64-v3 (AVX2/FMA, build.sh), so AVX-512, VNNI and AMX code is
// compiled only inside functions that carry one of the target attributes below, and runs only
// after a run-time CPU check said yes (each kernel's Available()). Every header with such code
// includes this file instead of <immintrin.h> directly, so the attribute sets and the warning
// workaround are written once.
#pragma once

// GCC 12's own AVX-512 headers trip -Wmaybe-uninitialized (their _mm512_undefined_*).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

// AVX2 + FMA: the baseline itself, spelled out where a function must compile to the same
// instructions when inlined into an AVX-512 caller (gelu_codes.h: the same bits either way).
#define ONNXVQ_AVX2 __attribute__((target("avx2,fma")))
// AVX-VNNI (the 256-bit vpdpbusd of Alder Lake and later).
#define ONNXVQ_AVX2_VNNI __attribute__((target("avx2,avxvnni")))
// AVX-512 F/BW/VL: IntLayerNorm's rows.
#define ONNXVQ_LN512 __attribute__((target("avx512f,avx512bw,avx512vl")))
// AVX-512 F/BW/VL/DQ: the QuantizedLinear epilogues (float conversions, masked byte stores).
#define ONNXVQ_AVX512_DQ __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
// AVX-512 F/BW/VL + VNNI: QLinearAttention / LogIntAttention (vpdpbusd on zmm).
#define ONNXVQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
// AVX-512 F/BW/VL + VBMI: LogIntAttention's softmax rows as byte tables (vpermi2b, lis_vbmi.h).
#define ONNXVQ_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi")))
// AMX: tile configuration alone, and the int8 tile multiply.
#define ONNXVQ_AMX_TILE __attribute__((target("amx-tile")))
#define ONNXVQ_AMX_INT8 __attribute__((target("amx-tile,amx-int8")))
