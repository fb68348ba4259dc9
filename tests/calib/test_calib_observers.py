"""Observers and quantization formulas against closed forms and brute force."""

from __future__ import annotations

import numpy as np
import pytest

from onnxvq.calibrate import (
    EmaObserver,
    MinMaxObserver,
    OmseObserver,
    PercentileObserver,
    PerChannelMinMax,
    StreamingHistogram,
    fake_quant,
    make_observer,
    qparams_from_range,
    weight_qparams,
)
from onnxvq.core.errors import CalibrationError


def test_qparams_formulas():
    s, zp = qparams_from_range(-1.0, 3.0, 8)
    assert s == pytest.approx(4.0 / 255) and zp == 64  # round(1 / (4/255)) = round(63.75)
    s, zp = qparams_from_range(0.5, 2.0, 8)  # range widened to include 0
    assert s == pytest.approx(2.0 / 255) and zp == 0
    s, zp = qparams_from_range(-2.0, 1.0, 8, symmetric=True, signed=True)
    assert s == 2.0 / 127 and zp == 0  # 127, not FQ-ViT's 127.5
    s, zp = qparams_from_range(-2.0, 1.0, 8, symmetric=True, signed=False)
    assert zp == 128
    s, zp = qparams_from_range(-1.0, 1.0, 8, signed=True)
    assert zp == 0 and s == pytest.approx(2 / 255)
    assert qparams_from_range(0.0, 0.0) == (1.0, 0)


def test_zero_is_exact_in_asymmetric_ranges():
    for lo, hi in [(-0.37, 5.1), (0.2, 0.9), (-3.3, -0.1)]:
        s, zp = qparams_from_range(lo, hi)
        assert fake_quant(np.array([0.0]), s, zp, 0, 255)[0] == 0.0


def test_minmax_exact():
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((4, 7)).astype(np.float32) * (i + 1) for i in range(5)]
    obs = MinMaxObserver("t")
    for x in data:
        obs.update(x)
    assert obs.range() == (float(min(x.min() for x in data)), float(max(x.max() for x in data)))


def test_ema_closed_form():
    obs = EmaObserver("t", momentum=0.1)
    for lo, hi in [(-1.0, 2.0), (-3.0, 4.0), (-2.0, 10.0)]:
        obs.update(np.array([lo, 0.0, hi]))
    lo = -1.0 + 0.1 * (-3.0 + 1.0)  # -1.2
    lo = lo + 0.1 * (-2.0 - lo)  # -1.28
    hi = 2.0 + 0.1 * (4.0 - 2.0)  # 2.2
    hi = hi + 0.1 * (10.0 - hi)  # 2.98
    assert obs.range() == pytest.approx((lo, hi), abs=1e-12)
    assert obs.range() == pytest.approx((-1.28, 2.98), abs=1e-12)


def test_histogram_rebinning_conserves_counts_and_bins_exactly():
    rng = np.random.default_rng(1)
    hist = StreamingHistogram(256)
    seen = []
    # ranges that grow right, left, by huge factors, and a constant first batch
    for lo, hi, n in [(3.0, 3.0, 10), (2.0, 4.0, 1000), (-50.0, 5.0, 999), (-60.0, 1e4, 77),
                      (0.0, 1.0, 5000)]:
        x = rng.uniform(lo, hi, n)
        seen.append(x)
        hist.add(x)
        assert hist.total == sum(len(s) for s in seen)
    everything = np.concatenate(seen)
    edges = hist.origin + np.arange(hist.bins + 1) * hist.width
    direct, _ = np.histogram(everything, edges)
    assert (direct == hist.counts).all()
    assert hist.width <= 2 * (everything.max() - everything.min()) / (hist.bins - 2) * 1.01


def test_percentile_streamed_with_growing_range():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(1_000_000)
    obs = PercentileObserver("t", tail=1e-5)
    for batch in np.array_split(x[np.argsort(np.abs(x))], 10):  # each batch widens the range
        obs.update(batch)
    lo, hi = obs.range()
    assert hi == pytest.approx(4.2649, rel=0.03) and lo == pytest.approx(-4.2649, rel=0.03)
    # against the sample itself: between the order statistics around tail*N, +- one bin
    s, w = np.sort(x), obs.hist.width
    assert s[9] - w <= lo <= s[10] + w
    assert s[-11] - w <= hi <= s[-10] + w
    assert obs.hist.counts.nbytes == 2048 * 8  # flat memory


def test_omse_clips_outlier_and_matches_brute_force():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200_000)
    x[123] = 50.0
    obs, mm = OmseObserver("t"), MinMaxObserver("t")
    for batch in np.array_split(x, 5):
        obs.update(batch)
        mm.update(batch)
    (lo, hi), _ = obs.search(8, False, False)
    assert mm.range()[1] == 50.0 and hi < 0.9 * 50.0
    factors = 1 - 0.01 * np.arange(90)
    raw = []
    for f in factors:
        s, zp = qparams_from_range(x.min() * f, x.max() * f)
        raw.append(((x - fake_quant(x, s, zp, 0, 255)) ** 2).sum())
    best = int(np.argmin(raw))
    assert hi == pytest.approx(x.max() * factors[best])
    assert raw[best] < 0.8 * raw[0]  # the clip is worth it


def test_omse_qparams_follow_requested_bits():
    x = np.random.default_rng(4).standard_normal(50_000)
    obs = OmseObserver("t")
    obs.update(x)
    s8, _ = obs.qparams(8)
    s4, _ = obs.qparams(4)
    assert s4 > 10 * s8  # 4 bits: coarser steps and a tighter clip than 8 bits


def test_weight_qparams_max_over_127_exact():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 10)).astype(np.float32)
    w[2] = 0.0
    scale, zp = weight_qparams(w, axis=0)
    expect = np.abs(w).max(axis=1) / np.float32(127)
    assert scale.dtype == np.float32 and zp.dtype == np.int8 and not zp.any()
    mask = np.arange(6) != 2
    assert (scale[mask] == expect[mask]).all()
    assert scale[2] > 0
    scale1, _ = weight_qparams(w, axis=1)  # MatMul weights [K, N]: output channels on axis 1
    assert (scale1 == np.abs(w).max(axis=0) / np.float32(127)).all()
    q = np.round(w / scale[:, None])
    assert np.abs(q).max() == 127


def test_per_channel_minmax():
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((2, 5, 3)) for _ in range(3)]
    obs = PerChannelMinMax("t", axis=-1)
    for x in xs:
        obs.update(x)
    lo, hi = obs.range()
    allx = np.concatenate(xs).reshape(-1, 3)
    assert (lo == allx.min(0)).all() and (hi == allx.max(0)).all()
    assert obs.tensor_range() == (allx.min(), allx.max())
    with pytest.raises(CalibrationError, match="channel count"):
        obs.update(np.zeros((2, 4)))


@pytest.mark.parametrize("method", ["minmax", "ema", "percentile", "omse"])
def test_nan_and_inf_rejected_with_tensor_name(method):
    obs = make_observer(method, "blocks.0/attn/Softmax_output_0")
    obs.update(np.ones(4))
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(CalibrationError, match="blocks.0/attn/Softmax_output_0"):
            obs.update(np.array([0.0, bad]))


def test_factory_errors_and_empty_observer():
    with pytest.raises(CalibrationError, match="unknown calibration method 'kl'"):
        make_observer("kl", "t")
    with pytest.raises(CalibrationError, match="bad options"):
        make_observer("minmax", "t", tail=0.1)
    assert make_observer("percentile", "t", tail=1e-4).tail == 1e-4
    with pytest.raises(CalibrationError, match="saw no data"):
        make_observer("minmax", "t").range()
