"""`--target trt` with `center` (issue 11 item 8): activation offsets folded so that symmetric
int8 carries what asymmetric uint8 would. The folds are the RepQ-ViT ones (`channel_fold`):
a centring x' = x - c (r = 1), or per-channel asymmetric codes deployed with z~ = 0."""

from __future__ import annotations

import numpy as np
import pytest
from test_reparam import C, _inputs, _model, _values

from onnxvq.calibrate.channels import channel_qparams
from onnxvq.calibrate.quant import qrange
from onnxvq.core.config import QuantConfig
from onnxvq.core.pipeline import PassContext
from onnxvq.core.runtime import make_session, random_inputs
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.channel_fold import centering
from onnxvq.passes.pipelines import REPARAMETERIZE
from onnxvq.quantizer.run import quantize
from onnxvq.verify.trt_rules import trt_violations


def _ranges(v, c):
    flat = v.reshape(-1, c)
    return flat.min(0), flat.max(0)


def test_centring_is_exact_and_centres_every_channel():
    model, x = _model(), _inputs()
    ln, act = _values(model, ["ln", "a"], x)
    ctx = PassContext(channel_qparams={"ln": centering(*_ranges(ln, C)),
                                       "a": centering(*_ranges(act, 24))})
    out, report = REPARAMETERIZE.run(model, ctx=ctx, numeric="end", atol=1e-4)
    ref, got = make_session(model).run(None, {"x": x}), make_session(out).run(None, {"x": x})
    assert max(np.abs(a - b).max() for a, b in zip(ref, got, strict=True)) < 1e-4
    ops = [n.op_type for n in out.graph.node]
    # fc1's bias and the residual, plus: the residual's x back (one Add), fc2's input shifted
    # (one Add), the W c bias of the two bias-less MatMuls (qkv, fc2); no Mul (r = 1)
    assert ops.count("Mul") == 0 and ops.count("Add") == 2 + 1 + 1 + 2
    (rec_ln,), (rec_act,) = (p.records for p in report.passes)
    ln2, act2 = _values(out, ["ln", rec_act.tensors[0]], x)
    for v, c in ((ln2, C), (act2, 24)):
        lo, hi = _ranges(v, c)
        np.testing.assert_allclose(lo, -hi, atol=1e-4)  # symmetric around 0 per channel


def test_asymmetric_codes_deploy_symmetric():
    """Per-channel asymmetric int8 codes, folded with z~ = 0: the symmetric per-tensor codes of
    x' are the asymmetric per-channel codes of x."""
    model, x = _model(), _inputs()
    (ln,) = _values(model, ["ln"], x)
    s, z = channel_qparams(*_ranges(ln, C), 8, symmetric=False, signed=True)
    assert np.ptp(z) > 20  # the offsets differ per channel: a symmetric quantizer wastes range
    out, report = REPARAMETERIZE.run(model, ctx=PassContext(channel_qparams={"ln": (s, z, 0)}),
                                     numeric="end", atol=1e-4)
    (rec,) = report.passes[0].records
    assert rec.zero_point == 0
    (ln2,) = _values(out, ["ln"], x)
    lo, hi = qrange(8, True)
    want = np.clip(np.round(ln.astype(np.float64) / s) + z, lo, hi)
    got = np.clip(np.round(ln2.astype(np.float64) / rec.scale), lo, hi)
    assert np.abs(got - want).max() <= 1 and np.mean(got != want) < 1e-3


@pytest.mark.parametrize("recipe", ["smooth", "repq"])
def test_trt_recipes_center_and_follow_the_rules(recipe):
    fp32 = build_tiny_vit(TinyViTConfig(depth=1))
    cfg = QuantConfig(target="trt", recipe=recipe, calib_size=8, batch_size=4)
    assert cfg.center
    result = quantize(fp32, None, cfg)
    assert trt_violations(result.model) == []
    folds = {p.pass_id: p for p in result.passes}
    assert folds["reparameterize-layernorm"].applied == 3  # ln1, ln2, final
    assert folds["reparameterize-activation"].applied == 1  # GELU -> fc2, centred
    a, b = make_session(fp32), make_session(result.model)
    feeds = random_inputs(a, batch=2)
    ref, out = a.run(None, feeds)[0], b.run(None, feeds)[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.95
