"""dynamo exports (torch.onnx's default since torch 2.9) get the fused graph their TorchScript
twins get: exact com.onnxvq / com.microsoft op counts after quantize, W8/A8 and --pts --lis, for
the corpus DeiT-tiny and Hugging Face ViT (eager and sdpa attention). Before the dynamo
canonical passes (fold-reshaped-transpose, compose-key-transpose, unbind-slices-to-split,
remove-zero-attention-mask) every dynamo attention here stayed unfused; HF eager's TorchScript
export needed remove-identity-cast."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest

from onnxvq.core.config import QuantConfig
from onnxvq.quantizer.run import quantize

_HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "timm", "transformers"))
# quantized_linear off: the counts do not depend on the machine having AMX / AVX-512 VNNI
NOISE = dict(calib_size=4, batch_size=2, quantized_linear="off")
DEIT = {"GeluQuantizeLinear": 12, "MatMulIntegerToFloat": 37}
HF = {"GeluQuantizeLinear": 4, "MatMulIntegerToFloat": 21}
# the TorchScript exports' first residual Add (patch tokens + position embedding) has an unknown
# token dim, so its LayerNorm stays unfused there (AddLayerNormQuantize / AddIntLayerNorm one
# fewer, --pts an IntLayerNorm instead); dynamo's shapes are static
EXPECTED = {
    ("deit_tiny_patch16_224", "dynamo"): ({**DEIT, "AddLayerNormQuantize": 24,
                                           "QLinearAttention": 12},
                                          {**DEIT, "AddIntLayerNorm": 25, "LogIntAttention": 12}),
    ("deit_tiny_patch16_224", "torchscript17"): (
        {**DEIT, "AddLayerNormQuantize": 23, "QLinearAttention": 12},
        {**DEIT, "AddIntLayerNorm": 24, "IntLayerNorm": 1, "LogIntAttention": 12}),
}
for _attn in ("eager", "sdpa"):
    EXPECTED[(f"hf_vit_tiny_{_attn}", "dynamo")] = (
        {**HF, "AddLayerNormQuantize": 8, "QLinearAttention": 4},
        {**HF, "AddIntLayerNorm": 9, "LogIntAttention": 4})
    EXPECTED[(f"hf_vit_tiny_{_attn}", "torchscript17")] = (
        {**HF, "AddLayerNormQuantize": 7, "QLinearAttention": 4},
        {**HF, "AddIntLayerNorm": 8, "IntLayerNorm": 1, "LogIntAttention": 4})


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.skipif(not _HAVE_TORCH, reason="needs torch, timm and transformers ([export] extra)")
@pytest.mark.parametrize(("name", "exporter"), list(EXPECTED),
                         ids=[f"{n}-{e}" for n, e in EXPECTED])
def test_fused_op_counts(corpus_model, name, exporter):
    path = corpus_model(name, exporter)
    for flags, want in zip(({}, {"pts": True, "lis": True}), EXPECTED[name, exporter],
                           strict=True):
        result = quantize(str(path), None, QuantConfig(**NOISE, **flags))
        got = Counter(n.op_type for n in result.model.graph.node if n.domain.startswith("com."))
        assert dict(got) == want, flags
        fused = [r for r in result.passes if r.pass_id in ("fuse-qlinear-attention",
                                                           "fuse-log-int-attention")]
        assert not any(r.refused for r in fused)  # every attention fused, none refused
