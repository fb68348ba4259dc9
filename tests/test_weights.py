"""Weight quantizers for low bits: clipping searches, GPTQ rounding, bias correction."""

from __future__ import annotations

import numpy as np
import pytest

from onnxvq.calibrate.observers import MinMaxObserver
from onnxvq.calibrate.weights import (
    MomentCollector,
    SecondMoments,
    bias_shift,
    quantize_rows,
)
from onnxvq.core.errors import CalibrationError


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 64)) * np.linspace(0.2, 2.0, 64)  # [out, in]
    w[3, 7] = 9.0  # an outlier weight: max-scaling wastes 4-bit levels on it
    mix = rng.standard_normal((64, 64)) / 8 + np.eye(64)
    x = rng.standard_normal((4096, 64)) @ mix + 0.3  # correlated inputs with a mean
    stats = SecondMoments("x")
    for chunk in np.split(x, 8):
        stats.update(chunk.reshape(-1, 8, 64))
    return w, x, stats


def _errors(w, x, codes, scale):
    w_hat = codes * scale[:, None]
    return ((w - w_hat) ** 2).sum(), ((x @ (w - w_hat).T) ** 2).mean()


def test_second_moments_are_streamed(layer):  # float32 per batch, float64 across
    _, x, stats = layer
    np.testing.assert_allclose(stats.hessian, x.T @ x / len(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-6)


def test_each_method_lowers_its_own_error(layer):
    w, x, stats = layer
    errs = {m: _errors(w, x, *quantize_rows(w, 4, m, stats))
            for m in ("max", "mse", "output", "gptq")}
    assert errs["mse"][0] < 0.9 * errs["max"][0]  # weight error
    assert errs["output"][1] <= errs["mse"][1]  # output error: its own objective
    assert errs["gptq"][1] < 0.85 * errs["output"][1]  # closed-form rounding on top
    for m in errs:
        codes, scale = quantize_rows(w, 4, m, stats)
        assert codes.min() >= -7 and codes.max() <= 7 and np.array_equal(codes, np.rint(codes))
        assert scale.dtype == np.float32 and scale.shape == (48,)


def test_bias_correction_removes_the_mean_output_shift(layer):
    w, x, stats = layer
    codes, scale = quantize_rows(w, 3, "mse", stats)
    w_hat = codes * scale[:, None]
    shift = bias_shift(w, w_hat, stats.mean)
    before = (x @ w.T - x @ w_hat.T).mean(0)
    after = (x @ w.T - (x @ w_hat.T + shift)).mean(0)
    assert np.abs(after).max() < 1e-3 * np.abs(before).max()


def test_methods_needing_statistics_say_so(layer):
    w, _, _ = layer
    with pytest.raises(CalibrationError, match="needs calibration statistics"):
        quantize_rows(w, 4, "gptq", None)
    with pytest.raises(CalibrationError, match="unknown weight method"):
        quantize_rows(w, 4, "adaround", None)


def test_moment_collector_leaves_the_site_observer_unchanged():
    rng = np.random.default_rng(1)
    moments = MomentCollector(["a"])
    make = moments.wrap(MinMaxObserver)
    wrapped, plain = make("a"), make("b")
    assert isinstance(plain, MinMaxObserver)
    ref = MinMaxObserver("a")
    for _ in range(3):
        x = rng.standard_normal((2, 5, 4))
        wrapped.update(x)
        ref.update(x)
    assert wrapped.qparams(4) == ref.qparams(4) and wrapped.range() == ref.range()
    assert moments.stats["a"].rows == 30


def test_recipe_fills_the_defaults_only():
    from onnxvq.core.config import QuantConfig
    from onnxvq.core.errors import UsageError

    cfg = QuantConfig(recipe="repq", weight_method="mse")
    assert (cfg.method, cfg.reparam, cfg.reparam_mlp, cfg.edge_bits) == ("omse", True, True, 8)
    assert cfg.weight_method == "mse"  # the user's choice stays
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UsageError, match="unknown recipe 'fast'"):
        QuantConfig(recipe="fast")
    with pytest.raises(UsageError, match="unknown weight_method"):
        QuantConfig(weight_method="adaround")
    with pytest.raises(UsageError, match="unknown lis_base 'e'"):
        QuantConfig(lis=True, lis_base="e")
    assert QuantConfig(lis_base="sqrt2").lis_octave_steps == 2 == 2 * QuantConfig().lis_octave_steps
    assert QuantConfig(recipe="repq", lis=True).lis_base == "sqrt2"  # the recipe's LIS codes


@pytest.fixture(scope="module")
def tiny():
    from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit

    return build_tiny_vit(TinyViTConfig(depth=2))


def _cosine(a, b):
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def test_gptq_in_quantize_beats_max_scaling_at_4_bits(tiny):
    from onnxvq.core.config import QuantConfig
    from onnxvq.core.runtime import make_session, random_inputs
    from onnxvq.quantizer.run import quantize

    base = QuantConfig(calib_size=16, batch_size=8, w_bits=4, a_bits=8)
    ref = make_session(tiny)
    feeds = random_inputs(ref, batch=8, seed=5)
    want = ref.run(None, feeds)[0]
    cos = {}
    for method in ("max", "gptq"):
        result = quantize(tiny, None, base.with_(weight_method=method, edge_bits=8))
        cos[method] = _cosine(want, make_session(result.model).run(None, feeds)[0])
        bits = {r.node: r.bits for r in result.weight_qparams.values()}
        assert sorted(set(bits.values())) == [4, 8]  # patch embedding and head at edge_bits
        assert sum(b == 8 for b in bits.values()) == 2
    assert 1 - cos["gptq"] < 0.8 * (1 - cos["max"])
